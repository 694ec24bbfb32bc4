import Foundation
import MayflyCore

/// The job GitLab hands out (the 201 body of `POST /jobs/request`), as far as Mayfly uses it.
/// Decoding is tolerant: unknown keys are ignored, and keys Mayfly does not need may be missing.
public struct JobPayload: Sendable, Decodable {
    public let id: Int
    public let token: String
    public let allowGitFetch: Bool?
    public let jobInfo: JobInfo?
    public let gitInfo: GitInfo?
    public let runnerInfo: RunnerInfoSection?
    public let variables: [Variable]?
    public let steps: [Step]?
    public let features: Features?
    /// Read leniently: a shape Mayfly does not expect here never fails the whole job.
    public let hooks: Lenient<[Hook]>?
    /// Only counted: Mayfly does not upload artifacts, restore caches or start services yet.
    public let artifacts: Lenient<[Ignored]>?
    public let cache: Lenient<[Ignored]>?
    public let services: Lenient<[Ignored]>?

    /// A value that is `nil` when it does not decode, instead of failing what contains it.
    public struct Lenient<Value: Decodable & Sendable>: Decodable, Sendable {
        public let value: Value?
        public init(from decoder: any Decoder) throws { value = try? Value(from: decoder) }
    }

    /// A `hooks` entry (`pre_get_sources_script`).
    public struct Hook: Sendable, Decodable {
        public let name: String
        public let script: [String]?
    }

    /// Any JSON value, skipped.
    public struct Ignored: Sendable, Decodable {
        public init(from decoder: any Decoder) throws {}
    }

    public struct JobInfo: Sendable, Decodable {
        public let id: Int?
        public let name: String?
        public let stage: String?
        public let projectID: Int?
        public let projectName: String?
        public let projectFullPath: String?

        enum CodingKeys: String, CodingKey {
            case id, name, stage
            case projectID = "project_id"
            case projectName = "project_name"
            case projectFullPath = "project_full_path"
        }
    }

    public struct GitInfo: Sendable, Decodable {
        public let repoURL: String?
        public let ref: String?
        public let sha: String?
        public let beforeSHA: String?
        public let refType: String?
        public let refspecs: [String]?
        public let depth: Int?

        enum CodingKeys: String, CodingKey {
            case repoURL = "repo_url"
            case ref, sha
            case beforeSHA = "before_sha"
            case refType = "ref_type"
            case refspecs, depth
        }
    }

    public struct RunnerInfoSection: Sendable, Decodable {
        public let timeout: Int?
    }

    public struct Variable: Sendable, Decodable {
        public let key: String
        public let value: String?
        public let `public`: Bool?
        public let masked: Bool?
        public let file: Bool?
        public let raw: Bool?
    }

    public struct Step: Sendable, Decodable {
        public let name: String
        public let script: [String]?
        public let timeout: Int?
        public let when: String?
        public let allowFailure: Bool?

        enum CodingKeys: String, CodingKey {
            case name, script, timeout, when
            case allowFailure = "allow_failure"
        }
    }

    public struct Features: Sendable, Decodable {
        public let failureReasons: [String]?
        public let tokenMaskPrefixes: [String]?

        enum CodingKeys: String, CodingKey {
            case failureReasons = "failure_reasons"
            case tokenMaskPrefixes = "token_mask_prefixes"
        }
    }

    enum CodingKeys: String, CodingKey {
        case id, token
        case allowGitFetch = "allow_git_fetch"
        case jobInfo = "job_info"
        case gitInfo = "git_info"
        case runnerInfo = "runner_info"
        case variables, steps, features, hooks, artifacts, cache, services
    }

    /// Reads a payload; a payload that is not a job (no id or token, wrong shapes) throws with a
    /// description, and `identify` can still find its id and token to fail it.
    public static func decode(_ bytes: [UInt8]) throws -> JobPayload {
        try JSONDecoder().decode(JobPayload.self, from: Data(bytes))
    }

    /// The id and token of a payload that does not decode as a whole, when they can be found.
    public static func identify(_ bytes: [UInt8]) -> (id: Int, token: String)? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any],
            let id = object["id"] as? Int, let token = object["token"] as? String
        else { return nil }
        return (id, token)
    }

    /// The value of a variable from the payload.
    public func variable(_ key: String) -> String? {
        variables?.last { $0.key == key }?.value
    }
}

/// GitLab's job payload as Mayfly's job model, with the commands that get the sources first.
public enum JobPayloadMapping {
    /// The job timeout when `runner_info.timeout` is missing or not positive (gitlab-runner's).
    public static let defaultTimeout: Duration = .seconds(7200)

    public struct Problem: Error, Sendable, CustomStringConvertible {
        public let description: String
    }

    /// Maps `payload` to a `Job`. `bundle` is the configuration's (GitLab jobs do not choose one).
    public static func job(from payload: JobPayload) throws(Problem) -> Job {
        guard let steps = payload.steps else {
            throw Problem(description: "the job has no steps (jobs using `run:` are not supported)")
        }
        guard let main = steps.first(where: { $0.name == "script" }) else {
            throw Problem(description: "the job has no 'script' step (steps: \(steps.map(\.name).joined(separator: ", ")))")
        }
        for step in steps where step.name != "script" && step.name != "after_script" {
            throw Problem(description: "step '\(step.name)' is not supported by Mayfly")
        }
        var variables: [JobVariable] = []
        for variable in payload.variables ?? [] {
            guard JobVariable.isValidName(variable.key) else { continue }  // GitLab allows names a shell cannot export
            variables.append(
                JobVariable(
                    name: variable.key, value: variable.value ?? "", masked: variable.masked ?? false,
                    file: variable.file ?? false))
        }
        // GitLab always sends the job token as CI_JOB_TOKEN; mask it whatever the payload says.
        if !variables.contains(where: { $0.name == "CI_JOB_TOKEN" }) {
            variables.append(JobVariable(name: "CI_JOB_TOKEN", value: payload.token, masked: true))
        } else {
            for index in variables.indices where variables[index].name == "CI_JOB_TOKEN" { variables[index].masked = true }
        }
        let projectPath =
            payload.jobInfo?.projectFullPath ?? payload.jobInfo?.projectName ?? "project-\(payload.jobInfo?.projectID ?? 0)"
        let projectDirectory = payload.variable("CI_PROJECT_DIR") ?? "/builds/\(projectPath)"
        if !variables.contains(where: { $0.name == "CI_PROJECT_DIR" }) {
            variables.append(JobVariable(name: "CI_PROJECT_DIR", value: projectDirectory))
        }
        let timeout = (payload.runnerInfo?.timeout ?? 0) > 0 ? Duration.seconds(payload.runnerInfo!.timeout!) : defaultTimeout
        let sources = GitSources(payload: payload, projectDirectory: projectDirectory).commands()
        var job = Job(
            id: "\(payload.id)", script: main.script ?? [], afterScript: [], variables: variables, timeout: timeout,
            workingDirectory: projectDirectory)
        // `hooks:pre_get_sources_script` runs before the sources are fetched, in the same shell.
        let hooks = payload.hooks?.value ?? []
        let preGetSources = hooks.first { $0.name == "pre_get_sources_script" }?.script ?? []
        job.prologue = preGetSources + sources
        for unsupported in hooks where unsupported.name != "pre_get_sources_script" {
            job.notices.append("the hook '\(unsupported.name)' is not supported by Mayfly and was not run")
        }
        if payload.hooks != nil && payload.hooks?.value == nil {
            job.notices.append("the job's hooks could not be read; none were run")
        }
        if let count = payload.artifacts?.value?.count, count > 0 {
            job.notices.append("the job defines artifacts; Mayfly does not upload artifacts, so none were uploaded")
        }
        if let count = payload.cache?.value?.count, count > 0 {
            job.notices.append(
                "the job defines a cache; Mayfly does not restore or save caches (each job starts from the bundle)")
        }
        if let count = payload.services?.value?.count, count > 0 {
            job.notices.append("the job defines services; Mayfly does not start service containers")
        }
        if let after = steps.first(where: { $0.name == "after_script" }) {
            job.afterScript = after.script ?? []
            if let seconds = after.timeout, seconds > 0 { job.afterScriptTimeout = .seconds(seconds) }
        }
        return job
    }
}

func shellQuote(_ value: String) -> String {
    "'" + value.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
