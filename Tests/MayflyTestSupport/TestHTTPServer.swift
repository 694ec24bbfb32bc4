import Foundation

/// A real HTTP or HTTPS server (Python's http.server, `Resources/test_http_server.py`) on
/// 127.0.0.1 and a free port, owned by the test that started it. It exits when `stop()` is
/// called or when this process dies (it watches its standard input).
public final class TestHTTPServer: @unchecked Sendable {
    public enum Mode: Sendable {
        case plain
        /// HTTPS with the given certificate and key; `clientCA` demands client certificates.
        case tls(certificate: String, key: String, clientCA: String? = nil)
    }

    public let port: Int
    public let baseURL: String
    private let server: PythonServer

    public init(_ mode: Mode) async throws {
        var arguments: [String] = []
        var scheme = "http"
        if case .tls(let certificate, let key, let clientCA) = mode {
            scheme = "https"
            arguments += ["--cert", certificate, "--key", key]
            if let clientCA { arguments += ["--client-ca", clientCA] }
        }
        server = try await PythonServer(script: "test_http_server", arguments: arguments)
        port = server.port
        baseURL = "\(scheme)://127.0.0.1:\(port)"
    }

    public func stop() { server.stop() }

    deinit { stop() }
}
