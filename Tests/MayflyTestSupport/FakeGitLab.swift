import Foundation
import Logging
import MayflyHTTP

/// The fake GitLab server (`Resources/fake_gitlab.py`): GitLab's runner API over real HTTP or
/// HTTPS on 127.0.0.1, driven through its `/__control` API. Owned by the test that starts it.
public final class FakeGitLab: @unchecked Sendable {
    public static let runnerToken = "glrt-test-runner-token"
    public static let registrationToken = "GR1348941-test-registration"

    public let url: String
    private let server: PythonServer
    private let client: HTTPClient

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    /// `tls`: serve HTTPS with the test PKI's server certificate; `clientCertificates`: demand one.
    public init(tls: Bool = false, clientCertificates: Bool = false, verbose: Bool = false) async throws {
        var arguments: [String] = []
        let pki = try TestPKI.shared()
        if tls {
            arguments += ["--cert", pki.serverCertificate, "--key", pki.serverKey]
            if clientCertificates { arguments += ["--client-ca", pki.caCertificate] }
        }
        if verbose { arguments.append("--verbose") }
        server = try await PythonServer(script: "fake_gitlab", arguments: arguments)
        url = "\(tls ? "https" : "http")://127.0.0.1:\(server.port)"
        var tlsOptions = TLSOptions(caFile: pki.caCertificate)
        if clientCertificates {
            tlsOptions.certFile = pki.clientCertificate
            tlsOptions.keyFile = pki.clientKey
        }
        client = HTTPClient(configuration: .init(tls: tlsOptions), logger: Logger(label: "fake-gitlab-control"))
    }

    public func stop() {
        client.shutdown()
        server.stop()
    }

    deinit { stop() }

    /// One control call; returns the JSON answer.
    @discardableResult
    public func control(_ method: HTTPMethod, _ path: String, _ body: [String: Any]? = nil) async throws -> Any {
        let bytes = try body.map { Array(try JSONSerialization.data(withJSONObject: $0)) }
        let response = try await client.execute(
            HTTPRequest(
                method: method, url: url + "/__control/" + path, headers: ["Content-Type": "application/json"],
                body: bytes.map { .bytes($0) }))
        guard (200..<300).contains(response.status) else {
            throw Failure(description: "control \(method) \(path): HTTP \(response.status) \(response.text)")
        }
        return try JSONSerialization.jsonObject(with: Data(response.body))
    }

    /// Enqueues a job; returns its id and token.
    public func enqueue(_ spec: [String: Any]) async throws -> (id: Int, token: String) {
        let answer = try await control(.post, "jobs", spec) as? [String: Any]
        guard let id = answer?["id"] as? Int, let token = answer?["token"] as? String else {
            throw Failure(description: "enqueue answered \(String(describing: answer))")
        }
        return (id, token)
    }

    /// The server's view of a job (state, trace, updates, patches, final update check).
    public func job(_ id: Int) async throws -> [String: Any] {
        (try await control(.get, "jobs/\(id)") as? [String: Any]) ?? [:]
    }

    /// Waits until the job reaches one of `states`.
    public func waitForJob(_ id: Int, states: Set<String>, timeout: Duration = .seconds(180)) async throws -> [String: Any] {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            let view = try await job(id)
            if let state = view["state"] as? String, states.contains(state) { return view }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw Failure(description: "job \(id) did not reach \(states) within \(timeout): \(try await job(id))")
    }

    public func cancel(_ id: Int, mode: String) async throws {
        try await control(.post, "jobs/\(id)/cancel", ["mode": mode])
    }

    public func scenario(_ body: [String: Any]) async throws {
        try await control(.post, "scenario", body)
    }

    /// Every API request received, in order (optionally only those whose path starts with `prefix`).
    public func requests(pathPrefix: String = "", method: String = "") async throws -> [[String: Any]] {
        var query = [String]()
        if !pathPrefix.isEmpty { query.append("path_prefix=\(pathPrefix)") }
        if !method.isEmpty { query.append("method=\(method)") }
        return
            (try await control(.get, "requests" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))) as? [[String: Any]])
            ?? []
    }
}
