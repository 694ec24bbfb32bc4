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
    private let process: Process
    private let stdin: Pipe

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public static var scriptPath: String {
        Bundle.module.url(forResource: "Resources/test_http_server", withExtension: "py")!.path
    }

    public init(_ mode: Mode) async throws {
        let directory = try makeTemporaryDirectory(prefix: "mayfly-http")
        defer { try? FileManager.default.removeItem(at: directory) }
        let portFile = directory.appendingPathComponent("port").path
        var arguments = [Self.scriptPath, "--port-file", portFile]
        var scheme = "http"
        if case .tls(let certificate, let key, let clientCA) = mode {
            scheme = "https"
            arguments += ["--cert", certificate, "--key", key]
            if let clientCA { arguments += ["--client-ca", clientCA] }
        }
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3"] + arguments
        stdin = Pipe()
        process.standardInput = stdin
        try process.run()
        let started = await eventually(timeout: .seconds(20)) { FileManager.default.fileExists(atPath: portFile) }
        guard started, let text = try? String(contentsOfFile: portFile, encoding: .utf8), let port = Int(text) else {
            process.terminate()
            throw Failure(description: "the test HTTP server did not start")
        }
        self.port = port
        self.baseURL = "\(scheme)://127.0.0.1:\(port)"
    }

    public func stop() {
        try? stdin.fileHandleForWriting.close()
        if process.isRunning { process.terminate() }
    }

    deinit { stop() }
}
