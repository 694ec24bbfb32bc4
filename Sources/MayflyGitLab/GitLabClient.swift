import Foundation
import Logging
import MayflyCore
import MayflyHTTP
import Synchronization

/// One GitLab server's runner API over Mayfly's HTTP client: registration, verification, job
/// requests, status updates and trace uploads, each answer interpreted as gitlab-runner does
/// (`../shared/reference/gitlab-runner-protocol.md`). It keeps the `X-GitLab-Last-Update`
/// bookkeeping. It knows nothing of VMs.
public final class GitLabClient: Sendable {
    public let endpoint: GitLabEndpoint
    let http: HTTPClient
    let logger: Logger
    /// gitlab-runner's HTTP-level retry: 408, 429, 5xx; five attempts; transport errors are not
    /// retried at this level (the callers' loops do).
    let retry = RetryPolicy(maxAttempts: 5, retriesTransportErrors: false)
    private let lastUpdate = Mutex<String?>(nil)

    /// How long a job request may stay open: well above Workhorse's long poll (about 50 s).
    public static let jobRequestTimeout: Duration = .seconds(600)

    public init(url: String, tls: TLSOptions, proxy: String?, logger: Logger) {
        endpoint = GitLabEndpoint(url: url)
        http = HTTPClient(
            configuration: .init(
                tls: tls, proxy: proxy, userAgent: RunnerInfo.userAgent, timeout: .seconds(3600), connectTimeout: .seconds(30)),
            logger: logger)
        self.logger = logger
    }

    public func shutdown() { http.shutdown() }

    // MARK: Requests

    private func send(
        _ method: HTTPMethod, _ path: String, json: [String: any Sendable]? = nil, body: [UInt8]? = nil,
        headers extra: HTTPHeaders = [:],
        acceptJSON: Bool = false, timeout: Duration? = nil
    ) async throws -> HTTPResponse {
        var headers = extra
        headers.add("X-Request-Id", requestID())
        if acceptJSON { headers.add("Accept", "application/json") }
        var payload: [UInt8]? = body
        if let json {
            headers.add("Content-Type", "application/json")
            payload = Array(try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys]))
        }
        let request = HTTPRequest(
            method: method, url: endpoint.url(path), headers: headers, body: payload.map { .bytes($0) }, timeout: timeout)
        do {
            return try await http.execute(request, retrying: retry) { [logger] attempt, outcome, delay in
                let what = (try? outcome.get()).map { "HTTP \($0.status)" } ?? "an error"
                logger.debug("\(method) \(path): \(what); retry \(attempt) in \(DurationText.format(delay))")
            }
        } catch let error as HTTPError {
            throw GitLabError.transport(error)
        }
    }

    private static func infoJSON(_ info: RunnerInfo) -> [String: any Sendable] {
        let data = (try? JSONEncoder().encode(info)) ?? Data("{}".utf8)
        return ((try? JSONSerialization.jsonObject(with: data)) as? [String: any Sendable]) ?? [:]
    }

    // MARK: Registration

    /// A runner's id and token, as verify and register return them.
    public struct Credentials: Sendable {
        public let id: Int
        public let token: Secret
        public let expiresAt: String?
    }

    /// `POST /runners/verify`: 200 with `{id, token, token_expires_at}` (older servers: a text body).
    public func verify(token: Secret, systemID: String, info: RunnerInfo = RunnerInfo()) async throws -> Credentials {
        let response = try await send(
            .post, "runners/verify", json: ["token": token.reveal(), "system_id": systemID, "info": Self.infoJSON(info)],
            headers: ["RUNNER-TOKEN": token.reveal()], acceptJSON: true)
        switch response.status {
        case 200:
            let object = (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any]
            return Credentials(id: object?["id"] as? Int ?? 0, token: token, expiresAt: object?["token_expires_at"] as? String)
        case 403: throw GitLabError.forbidden(errorMessage(response))
        default:
            throw GitLabError.unexpected(
                status: response.status, endpoint: "POST /runners/verify", message: errorMessage(response))
        }
    }

    /// `POST /runners` with a legacy registration token: 201 with the new runner's token.
    public func register(registrationToken: Secret, description: String, tags: [String], runUntagged: Bool) async throws
        -> Credentials
    {
        var info = Self.infoJSON(RunnerInfo())
        info = ["name": info["name"] ?? "mayfly"]
        let response = try await send(
            .post, "runners",
            json: [
                "token": registrationToken.reveal(), "description": description, "tag_list": tags.joined(separator: ","),
                "run_untagged": runUntagged, "locked": true, "paused": false, "info": info,
            ], acceptJSON: true)
        switch response.status {
        case 201:
            guard let object = (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any],
                let token = object["token"] as? String
            else { throw GitLabError.decoding(endpoint: "POST /runners", detail: "no token in \(response.text.prefix(200))") }
            return Credentials(
                id: object["id"] as? Int ?? 0, token: Secret(token), expiresAt: object["token_expires_at"] as? String)
        case 403: throw GitLabError.forbidden("the registration token is not valid (\(errorMessage(response)))")
        case 410:
            throw GitLabError.unexpected(
                status: 410, endpoint: "POST /runners",
                message: "registration tokens are disabled on this server; create a runner in GitLab and use its glrt- token")
        default: throw GitLabError.unexpected(status: response.status, endpoint: "POST /runners", message: errorMessage(response))
        }
    }

    /// `DELETE /runners` (legacy tokens) or `DELETE /runners/managers` (`glrt-` tokens: only this
    /// host's manager). Both answer 204.
    public func unregister(token: Secret, systemID: String) async throws {
        let managers = token.reveal().hasPrefix("glrt-")
        let path = managers ? "runners/managers" : "runners"
        var json: [String: any Sendable] = ["token": token.reveal()]
        if managers { json["system_id"] = systemID }
        let response = try await send(.delete, path, json: json, headers: ["RUNNER-TOKEN": token.reveal()])
        switch response.status {
        case 204: return
        case 403: throw GitLabError.forbidden(errorMessage(response))
        default:
            throw GitLabError.unexpected(status: response.status, endpoint: "DELETE /\(path)", message: errorMessage(response))
        }
    }

    // MARK: Jobs

    /// What `POST /jobs/request` produced.
    public enum JobRequestResult: Sendable {
        case job(JobPayload, raw: [UInt8])
        /// A 201 whose body is not a usable job; `identity` when its id and token could be read.
        case malformed(identity: (id: Int, token: String)?, problem: String)
        /// 204. `heldByServer`: Workhorse held the request (long polling) and let it go because the
        /// queue changed or its wait ended — asking again at once costs the server nothing.
        case noJob(heldByServer: Bool)
        case conflict
        case forbidden
        case unavailable
        case failed(String)
    }

    /// Asks for a job. The request may be held open by the server (long polling); cancelling the
    /// calling task abandons it at once.
    public func requestJob(token: Secret, systemID: String, info: RunnerInfo = RunnerInfo()) async throws -> JobRequestResult {
        var json: [String: any Sendable] = ["token": token.reveal(), "system_id": systemID, "info": Self.infoJSON(info)]
        if let last = lastUpdate.withLock({ $0 }) { json["last_update"] = last }
        let response: HTTPResponse
        do {
            response = try await send(
                .post, "jobs/request", json: json, headers: ["RUNNER-TOKEN": token.reveal()], acceptJSON: true,
                timeout: Self.jobRequestTimeout)
        } catch let error as GitLabError {
            return .failed(error.description)
        }
        if let value = response.headers["X-GitLab-Last-Update"], !value.isEmpty {
            lastUpdate.withLock { $0 = value }
        }
        switch response.status {
        case 201:
            guard (response.headers["Content-Type"] ?? "").lowercased().hasPrefix("application/json") else {
                return .malformed(
                    identity: JobPayload.identify(response.body),
                    problem: "the job came as \(response.headers["Content-Type"] ?? "no content type"), not JSON")
            }
            do {
                return .job(try JobPayload.decode(response.body), raw: response.body)
            } catch {
                return .malformed(
                    identity: JobPayload.identify(response.body), problem: "the job payload does not decode: \(error)")
            }
        case 204:
            // Workhorse's own 204 carries `Gitlab-Ci-Builds-Polling: yes` and no X-GitLab-Last-Update;
            // Rails' 204 always has X-GitLab-Last-Update.
            let held =
                response.headers["Gitlab-Ci-Builds-Polling"]?.lowercased() == "yes"
                && (response.headers["X-GitLab-Last-Update"] ?? "").isEmpty
            return .noJob(heldByServer: held)
        case 403: return .forbidden
        case 409: return .conflict
        case 503: return .unavailable
        default: return .failed("HTTP \(response.status): \(errorMessage(response))")
        }
    }

    /// GitLab's answer to a job update or a trace upload, interpreted in gitlab-runner's order.
    public struct JobResponse: Sendable, Equatable {
        public enum Kind: Sendable, Equatable {
            /// 200 (update) or 202 (trace): done.
            case succeeded
            /// 202 on an update: not finished yet; send the log and the update again.
            case accepted
            /// 403, 404 on an update, or `Job-Status: canceled|failed`: stop the job, send nothing more.
            case abort
            /// 416 on a trace upload: the server holds this many bytes.
            case rangeMismatch(Int)
            /// 412 on an update: send the whole log again.
            case traceValidationFailed
            /// 404 on a trace upload.
            case notFound
            /// Anything else, transport errors included: try again later.
            case failed(String)
        }

        public let kind: Kind
        /// `Job-Status: canceling`: stop the main script, run after_script, finish.
        public let cancelRequested: Bool
        /// `X-GitLab-Trace-Update-Interval`, when sent and valid (capped at 15 minutes).
        public let updateInterval: Duration?
        /// For trace uploads: the server's stored length after a 202 (from `Range: 0-N`).
        public let storedLength: Int?
    }

    static func interpret(_ response: HTTPResponse, trace: Bool) -> JobResponse {
        let status = (response.headers["Job-Status"] ?? "").lowercased()
        var interval: Duration?
        if let text = response.headers["X-GitLab-Trace-Update-Interval"], let seconds = Int(text.trimmingWhitespace()),
            seconds > 0
        {
            interval = .seconds(min(seconds, 900))
        }
        let range = response.headers["Range"].flatMap { value -> Int? in
            let parts = value.split(separator: "-")
            return parts.count == 2 ? Int(parts[1].trimmingWhitespace()) : nil
        }
        let kind: JobResponse.Kind
        if status == "canceled" || status == "failed" || response.status == 403 {
            kind = .abort
        } else if trace {
            switch response.status {
            case 202: kind = .succeeded
            case 404: kind = .notFound
            case 416: kind = .rangeMismatch(range ?? 0)
            default: kind = .failed("HTTP \(response.status)")
            }
        } else {
            switch response.status {
            case 200: kind = .succeeded
            case 202: kind = .accepted
            case 412: kind = .traceValidationFailed
            case 404: kind = .abort
            default: kind = .failed("HTTP \(response.status)")
            }
        }
        return JobResponse(
            kind: kind, cancelRequested: status == "canceling", updateInterval: interval,
            storedLength: response.status == 202 ? range : nil)
    }

    /// The fields of `PUT /jobs/:id` besides the token.
    public struct JobUpdate: Sendable, Equatable {
        public var state: String
        public var failureReason: String?
        public var exitCode: Int32?
        public var checksum: String?
        public var bytesize: UInt64?

        public init(
            state: String, failureReason: String? = nil, exitCode: Int32? = nil, checksum: String? = nil, bytesize: UInt64? = nil
        ) {
            self.state = state
            self.failureReason = failureReason
            self.exitCode = exitCode
            self.checksum = checksum
            self.bytesize = bytesize
        }
    }

    /// `PUT /jobs/:id`. The job token goes both in the body (the server requires it there) and in
    /// `JOB-TOKEN`.
    public func updateJob(id: Int, token: Secret, _ update: JobUpdate) async -> JobResponse {
        var json: [String: any Sendable] = ["token": token.reveal(), "state": update.state, "info": Self.infoJSON(RunnerInfo())]
        if let reason = update.failureReason { json["failure_reason"] = reason }
        if let exitCode = update.exitCode, exitCode != 0 { json["exit_code"] = Int(exitCode) }
        var output: [String: any Sendable] = [:]
        if let checksum = update.checksum {
            output["checksum"] = checksum
            json["checksum"] = checksum
        }
        if let bytesize = update.bytesize { output["bytesize"] = bytesize }
        if !output.isEmpty { json["output"] = output }
        do {
            let response = try await send(.put, "jobs/\(id)", json: json, headers: ["JOB-TOKEN": token.reveal()])
            return Self.interpret(response, trace: false)
        } catch {
            return JobResponse(kind: .failed("\(error)"), cancelRequested: false, updateInterval: nil, storedLength: nil)
        }
    }

    /// `PATCH /jobs/:id/trace` with `bytes` placed at `offset` (`Content-Range: start-end`, end
    /// inclusive).
    public func patchTrace(id: Int, token: Secret, offset: Int, bytes: [UInt8]) async -> JobResponse {
        let headers: HTTPHeaders = [
            "JOB-TOKEN": token.reveal(), "Content-Type": "text/plain",
            "Content-Range": "\(offset)-\(offset + max(bytes.count, 1) - 1)",
        ]
        do {
            let response = try await send(.patch, "jobs/\(id)/trace?debug_trace=false", body: bytes, headers: headers)
            return Self.interpret(response, trace: true)
        } catch {
            return JobResponse(kind: .failed("\(error)"), cancelRequested: false, updateInterval: nil, storedLength: nil)
        }
    }
}
