import Foundation
import MayflyCore
import MayflyHTTP

/// Where a GitLab server's runner API lives, and the headers every call carries. The base URL is
/// the configured URL without trailing `/` and a trailing `/ci`, plus `/api/v4/` (as
/// gitlab-runner does it).
public struct GitLabEndpoint: Sendable, Equatable {
    public let serverURL: String
    public let apiBase: String

    public init(url: String) {
        var base = url
        while base.hasSuffix("/") { base.removeLast() }
        if base.hasSuffix("/ci") { base.removeLast(3) }
        while base.hasSuffix("/") { base.removeLast() }
        serverURL = base
        apiBase = base + "/api/v4/"
    }

    public func url(_ path: String) -> String { apiBase + path }
}

/// The `info` object Mayfly sends on verify and job requests. It describes Mayfly honestly: its
/// features map claims only what Mayfly does.
public struct RunnerInfo: Sendable, Encodable {
    public var name = "mayfly"
    public var version = MayflyVersion.current
    public var revision = "unknown"
    public var platform = "linux"
    public var architecture = RunnerInfo.currentArchitecture
    public var executor = "mayfly-qemu"
    public var shell = "sh"
    public var features = Features()
    public var config = ["gpus": ""]

    public init() {}

    /// Every key gitlab-runner sends, always present. `true` only where Mayfly does it.
    public struct Features: Sendable, Encodable {
        public var variables = true
        public var image = false
        public var services = false
        public var artifacts = false
        public var cache = false
        public var fallback_cache_keys = false
        public var shared = false
        public var upload_multiple_artifacts = false
        public var upload_raw_artifacts = false
        public var session = false
        public var terminal = false
        public var refspecs = true
        public var masking = true
        public var proxy = false
        public var raw_variables = false
        public var artifacts_exclude = false
        public var multi_build_steps = false
        public var trace_reset = true
        public var trace_checksum = true
        public var trace_size = true
        public var vault_secrets = false
        public var cancelable = true
        public var return_exit_code = true
        public var service_variables = false
        public var service_multiple_aliases = false
        public var image_executor_opts = false
        public var service_executor_opts = false
        public var cancel_gracefully = true
        public var native_steps_integration = false
        public var two_phase_job_commit = true
        public var job_inputs = false
    }

    static var currentArchitecture: String {
        #if arch(x86_64)
            return "amd64"
        #elseif arch(arm64)
            return "arm64"
        #else
            return "unknown"
        #endif
    }

    /// `mayfly 0.1.0 (linux/amd64)`, in the spirit of gitlab-runner's User-Agent.
    public static var userAgent: String { "mayfly \(MayflyVersion.current) (linux/\(currentArchitecture))" }
}

/// What a GitLab call produced, when it is not plain success.
public enum GitLabError: Error, Sendable, CustomStringConvertible {
    /// The server refused the token (403).
    case forbidden(String)
    /// An answer the protocol does not allow at this point.
    case unexpected(status: Int, endpoint: String, message: String)
    /// The request never got an answer.
    case transport(HTTPError)
    /// The body was not what the protocol says.
    case decoding(endpoint: String, detail: String)

    public var description: String {
        switch self {
        case .forbidden(let message): return "GitLab refused the token: \(message)"
        case .unexpected(let status, let endpoint, let message):
            return "GitLab answered \(status) to \(endpoint)" + (message.isEmpty ? "" : ": \(message)")
        case .transport(let error): return "\(error)"
        case .decoding(let endpoint, let detail): return "GitLab's answer to \(endpoint) could not be read: \(detail)"
        }
    }
}

/// `X-Request-Id`: a UUID without dashes (32 hex characters), as gitlab-runner sends it.
func requestID() -> String {
    UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
}

/// The `message` of a GitLab JSON error body, for logs only (clients depend on status codes).
func errorMessage(_ response: HTTPResponse) -> String {
    if let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
        let message = object["message"]
    {
        return "\(message)"
    }
    return String(response.text.prefix(200))
}
