import Foundation

/// One of the test suite's Python servers (`Resources/*.py`) as a child process: started with a
/// port file, listening on 127.0.0.1 and a free port, stopped by `stop()` or when this process
/// dies (the servers exit when their standard input closes).
final class PythonServer: @unchecked Sendable {
    let port: Int
    private let process = Process()
    private let stdin = Pipe()

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Starts `Resources/<script>.py` with `arguments` (after `--port-file`).
    init(script: String, arguments: [String]) async throws {
        let directory = try makeTemporaryDirectory(prefix: "mayfly-server")
        defer { try? FileManager.default.removeItem(at: directory) }
        let portFile = directory.appendingPathComponent("port").path
        let path = Bundle.module.url(forResource: "Resources/\(script)", withExtension: "py")!.path
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", path, "--port-file", portFile] + arguments
        process.standardInput = stdin
        try process.run()
        let started = await eventually(timeout: .seconds(20)) { FileManager.default.fileExists(atPath: portFile) }
        guard started, let text = try? String(contentsOfFile: portFile, encoding: .utf8), let port = Int(text) else {
            process.terminate()
            throw Failure(description: "\(script).py did not start")
        }
        self.port = port
    }

    func stop() {
        try? stdin.fileHandleForWriting.close()
        if process.isRunning { process.terminate() }
    }

    deinit { stop() }
}
