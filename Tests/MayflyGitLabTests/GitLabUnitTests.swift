import Foundation
import MayflyCore
import MayflyHTTP
import Testing

@testable import MayflyGitLab

@Suite("GitLab protocol pieces")
struct GitLabUnitTests {
    @Test(
        "the API base URL drops trailing slashes and a trailing /ci",
        arguments: [
            ("https://gitlab.example.com", "https://gitlab.example.com/api/v4/"),
            ("https://gitlab.example.com/", "https://gitlab.example.com/api/v4/"),
            ("https://gitlab.example.com/ci", "https://gitlab.example.com/api/v4/"),
            ("https://gitlab.example.com/ci/", "https://gitlab.example.com/api/v4/"),
            ("https://example.com/gitlab", "https://example.com/gitlab/api/v4/"),
        ])
    func endpoint(input: String, expected: String) {
        #expect(GitLabEndpoint(url: input).apiBase == expected)
    }

    @Test("update and trace answers are read in gitlab-runner's order")
    func interpretation() {
        func response(_ status: Int, _ headers: HTTPHeaders = [:]) -> HTTPResponse {
            HTTPResponse(status: status, headers: headers)
        }
        let update = { (r: HTTPResponse) in GitLabClient.interpret(r, trace: false) }
        let trace = { (r: HTTPResponse) in GitLabClient.interpret(r, trace: true) }
        #expect(update(response(200)).kind == .succeeded)
        #expect(
            update(response(202, ["X-GitLab-Trace-Update-Interval": "4"]))
                == .init(
                    kind: .accepted, cancelRequested: false, updateInterval: .seconds(4), storedLength: nil))
        #expect(update(response(200, ["Job-Status": "canceled"])).kind == .abort, "Job-Status canceled wins over 200")
        #expect(update(response(403)).kind == .abort)
        #expect(update(response(404)).kind == .abort)
        #expect(update(response(412)).kind == .traceValidationFailed)
        #expect(update(response(500)).kind == .failed("HTTP 500"))
        #expect(update(response(200, ["Job-Status": "canceling"])).cancelRequested)
        #expect(
            trace(response(202, ["Range": "0-1024", "Job-Status": "running", "X-GitLab-Trace-Update-Interval": "60"]))
                == .init(
                    kind: .succeeded, cancelRequested: false, updateInterval: .seconds(60), storedLength: 1024))
        #expect(trace(response(416, ["Range": "0-11"])).kind == .rangeMismatch(11))
        #expect(trace(response(416)).kind == .rangeMismatch(0))
        #expect(trace(response(403, ["Job-Status": "canceled"])).kind == .abort)
        #expect(trace(response(404)).kind == .notFound)
        #expect(trace(response(202, ["Job-Status": "canceling"])).cancelRequested)
        #expect(
            trace(response(202, ["X-GitLab-Trace-Update-Interval": "100000"])).updateInterval == .seconds(900), "capped at 15 min"
        )
        #expect(trace(response(202, ["X-GitLab-Trace-Update-Interval": "0"])).updateInterval == nil)
    }

    @Test("failure reasons are mapped against what the server supports")
    func failureReasons() {
        #expect(GitLabJobSession.finalUpdate(for: .exited(0), supported: []) == .init(state: "success"))
        #expect(
            GitLabJobSession.finalUpdate(for: .exited(2), supported: [])
                == .init(state: "failed", failureReason: "script_failure", exitCode: 2))
        #expect(
            GitLabJobSession.finalUpdate(for: .timedOut(after: .seconds(1)), supported: []).failureReason
                == "job_execution_timeout")
        #expect(GitLabJobSession.finalUpdate(for: .systemFailure("x"), supported: []).failureReason == "runner_system_failure")
        #expect(GitLabJobSession.finalUpdate(for: .cancelled, supported: []).failureReason == "unknown_failure")
        #expect(GitLabJobSession.finalUpdate(for: .cancelled, supported: ["job_canceled"]).failureReason == "job_canceled")
        #expect(GitLabJobSession.mapReason("image_pull_failure", []) == "runner_system_failure")
        #expect(GitLabJobSession.mapReason("runner_configuration_error", []) == "script_failure")
        #expect(GitLabJobSession.mapReason("", []) == "script_failure")
    }

    static let payload = """
        {"id": 42, "token": "job-token-abcdefgh", "allow_git_fetch": true,
         "job_info": {"id": 42, "name": "test", "stage": "test", "project_id": 7, "project_name": "demo", "project_full_path": "group/demo"},
         "git_info": {"repo_url": "https://gitlab-ci-token:job-token-abcdefgh@gitlab.example.com/group/demo.git", "ref": "main",
                      "sha": "0123456789abcdef0123456789abcdef01234567", "before_sha": "0000", "ref_type": "branch",
                      "refspecs": ["+refs/heads/main:refs/remotes/origin/main"], "depth": 20, "repo_object_format": "sha1"},
         "runner_info": {"timeout": 1800, "runner_session_url": null},
         "variables": [{"key": "CI", "value": "true", "public": true, "masked": false},
                       {"key": "CI_JOB_TOKEN", "value": "job-token-abcdefgh", "public": false, "masked": false},
                       {"key": "CI_PROJECT_DIR", "value": "/builds/group/demo", "public": true, "masked": false},
                       {"key": "SECRET", "value": "hunter2-hunter2", "public": false, "masked": true},
                       {"key": "KUBECONFIG", "value": "apiVersion: v1", "public": false, "masked": false, "file": true},
                       {"key": "not-a-shell-name", "value": "x", "public": true, "masked": false}],
         "steps": [{"name": "script", "script": ["make test"], "timeout": 1800, "when": "on_success", "allow_failure": false},
                   {"name": "after_script", "script": ["echo bye"], "timeout": 120, "when": "always", "allow_failure": true}],
         "image": {"name": "debian"}, "services": [], "artifacts": [], "cache": [], "credentials": [], "dependencies": [],
         "features": {"trace_sections": true, "failure_reasons": ["script_failure", "job_execution_timeout"]},
         "some_future_key": {"ignored": true}}
        """

    @Test("a payload becomes a job: steps, variables (masked, file), timeouts, project directory, sources")
    func mapping() throws {
        let payload = try JobPayload.decode(Array(Self.payload.utf8))
        let job = try JobPayloadMapping.job(from: payload)
        #expect(job.id == "42")
        #expect(job.script == ["make test"])
        #expect(job.afterScript == ["echo bye"])
        #expect(job.afterScriptTimeout == .seconds(120))
        #expect(job.timeout == .seconds(1800))
        #expect(job.workingDirectory == "/builds/group/demo")
        #expect(job.variables.contains(JobVariable(name: "SECRET", value: "hunter2-hunter2", masked: true)))
        #expect(job.variables.contains(JobVariable(name: "KUBECONFIG", value: "apiVersion: v1", file: true)))
        #expect(job.variables.contains { $0.name == "CI_JOB_TOKEN" && $0.masked }, "the job token is always masked")
        #expect(!job.variables.contains { $0.name == "not-a-shell-name" })
        #expect(job.maskedValues.contains("job-token-abcdefgh"))
        let sources = job.prologue.joined(separator: "\n")
        #expect(sources.contains("fetch -q --prune --depth 20 origin '+refs/heads/main:refs/remotes/origin/main'"))
        #expect(sources.contains("git checkout -q -f '0123456789abcdef0123456789abcdef01234567'"))
    }

    @Test("GIT_STRATEGY none gets no sources; clone starts afresh; GIT_DEPTH overrides the payload's depth")
    func strategies() throws {
        func job(_ extra: String) throws -> Job {
            let text = Self.payload.replacingOccurrences(
                of: "\"variables\": [", with: "\"variables\": [\(extra)")
            return try JobPayloadMapping.job(from: JobPayload.decode(Array(text.utf8)))
        }
        #expect(try job(#"{"key": "GIT_STRATEGY", "value": "none", "public": true, "masked": false},"#).prologue.isEmpty)
        let clone = try job(
            #"{"key": "GIT_STRATEGY", "value": "clone", "public": true, "masked": false}, {"key": "GIT_DEPTH", "value": "3", "public": true, "masked": false},"#
        )
        #expect(clone.prologue.joined().contains("rm -rf '/builds/group/demo'"))
        #expect(clone.prologue.joined().contains("--depth 3 "))
    }

    @Test(
        "pre_get_sources_script runs before the sources; artifacts, cache and services are named in warnings, not skipped silently"
    )
    func hooksAndUnsupported() throws {
        let extra = #"""
            "hooks": [{"name": "pre_get_sources_script", "script": ["echo before-sources"]}],
            "artifacts": [{"name": "out", "untracked": false, "paths": ["out/"], "when": "on_success", "expire_in": "1 day", "artifact_type": "archive", "artifact_format": "zip"}],
            "cache": [{"key": "k", "untracked": false, "paths": ["vendor/"], "policy": "pull-push", "when": "on_success", "fallback_keys": []}],
            "services": [{"name": "postgres:16", "alias": "db", "command": ["postgres"], "entrypoint": "/bin/sh"}],
            "image": {"name": "debian:12", "entrypoint": ["/bin/sh"]},
            "variables": [
            """#
        let text = Self.payload.replacingOccurrences(of: "\"variables\": [", with: extra)
        let job = try JobPayloadMapping.job(from: JobPayload.decode(Array(text.utf8)))
        #expect(job.prologue.first == "echo before-sources", "the hook comes before the sources")
        #expect(job.prologue.joined(separator: "\n").contains("git checkout"))
        #expect(job.notices.count == 3)
        #expect(job.notices.contains { $0.contains("artifacts") })
        #expect(job.notices.contains { $0.contains("cache") })
        #expect(job.notices.contains { $0.contains("services") })
        let plain = try JobPayloadMapping.job(from: JobPayload.decode(Array(Self.payload.utf8)))
        #expect(plain.notices.isEmpty)
        // Shapes Mayfly does not expect in these keys never fail the job.
        let odd = Self.payload.replacingOccurrences(
            of: "\"variables\": [", with: #""hooks": {"x": 1}, "artifacts": "all", "cache": 3, "variables": ["#)
        let tolerated = try JobPayloadMapping.job(from: JobPayload.decode(Array(odd.utf8)))
        #expect(tolerated.script == ["make test"])
        #expect(tolerated.notices.contains { $0.contains("hooks could not be read") })
    }

    @Test("payloads Mayfly cannot run are refused with a reason; broken JSON still yields id and token")
    func unusable() throws {
        let noScript = Self.payload.replacingOccurrences(of: "\"name\": \"script\"", with: "\"name\": \"release\"")
        #expect(throws: JobPayloadMapping.Problem.self) {
            try JobPayloadMapping.job(from: JobPayload.decode(Array(noScript.utf8)))
        }
        let broken = Array(#"{"id": 9, "token": "t", "steps": "not a list"}"#.utf8)
        #expect(throws: (any Error).self) { try JobPayload.decode(broken) }
        #expect(JobPayload.identify(broken)?.id == 9)
    }

    @Test("the runner info claims only what Mayfly does")
    func info() throws {
        let object = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(RunnerInfo())) as? [String: Any])
        let features = try #require(object["features"] as? [String: Bool])
        #expect(features.count == 31, "every feature key gitlab-runner sends")
        for claimed in [
            "variables", "masking", "trace_reset", "trace_checksum", "trace_size", "cancelable", "cancel_gracefully",
            "return_exit_code", "refspecs", "two_phase_job_commit",
        ] {
            #expect(features[claimed] == true, "\(claimed)")
        }
        for notClaimed in [
            "image", "services", "artifacts", "cache", "terminal", "session", "vault_secrets", "multi_build_steps",
        ] {
            #expect(features[notClaimed] == false, "\(notClaimed)")
        }
        #expect(object["name"] as? String == "mayfly")
        #expect(object["executor"] as? String == "mayfly-qemu")
    }

    @Test("CRC-32 matches zlib's")
    func crc() {
        var crc = CRC32()
        crc.update(Array("The quick brown fox jumps over the lazy dog".utf8))
        #expect(crc.value == 0x414F_A339)
        #expect(crc.gitLabChecksum == "crc32:414fa339")
        #expect(CRC32().gitLabChecksum == "crc32:00000000")
    }
}
