import Foundation
import MayflyCore

/// Talks to QEMU's QMP socket: one short connection per command (greeting, `qmp_capabilities`,
/// the command, its reply), skipping the asynchronous events QEMU interleaves. The socket work
/// runs on `BlockingWork`'s threads with read and write timeouts.
public struct QMPClient: Sendable {
    public let socketPath: String

    public init(socketPath: String) { self.socketPath = socketPath }

    /// QEMU's answer to one command: the raw `return` or `error` object as JSON text.
    public struct Reply: Sendable, Equatable {
        public let isError: Bool
        public let json: String
    }

    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let description: String
    }

    /// Runs `command` (a QMP command name, with optional JSON `arguments`) and returns the reply.
    public func execute(_ command: String, arguments: String? = nil, timeout: Duration = .seconds(5)) async throws -> Reply {
        let path = socketPath
        return try await BlockingWork.run { () throws -> Reply in
            guard let fd = SocketIO.connectUnix(path, timeout: timeout) else {
                throw Failure(description: "cannot connect to QMP socket \(path): \(String(cString: strerror(errno)))")
            }
            defer { close(fd) }
            var reader = LineReader(fd: fd)
            guard let greeting = reader.nextLine(), greeting.contains("\"QMP\"") else {
                throw Failure(description: "QMP socket \(path) sent no greeting")
            }
            _ = try Self.exchange(fd, &reader, #"{"execute":"qmp_capabilities"}"#)
            let request = arguments.map { #"{"execute":"\#(command)","arguments":\#($0)}"# } ?? #"{"execute":"\#(command)"}"#
            return try Self.exchange(fd, &reader, request)
        }
    }

    /// Whether the QMP socket accepts a connection and greets.
    public func isReady() async -> Bool {
        (try? await execute("query-status", timeout: .seconds(2))) != nil
    }

    private static func exchange(_ fd: Int32, _ reader: inout LineReader, _ request: String) throws -> Reply {
        guard SocketIO.writeAll(fd, Array((request + "\n").utf8)) else { throw Failure(description: "QMP write failed") }
        while let line = reader.nextLine() {
            if line.hasPrefix("{\"return\"") { return Reply(isError: false, json: line) }
            if line.hasPrefix("{\"error\"") { return Reply(isError: true, json: line) }
            // {"event": …} lines are asynchronous notifications: skip them.
        }
        throw Failure(description: "QMP connection closed before the reply to \(request)")
    }
}

/// Splits a socket's byte stream into newline-terminated lines.
struct LineReader {
    let fd: Int32
    private var buffer: [UInt8] = []

    init(fd: Int32) { self.fd = fd }

    mutating func nextLine() -> String? {
        while true {
            if let newline = buffer.firstIndex(of: 10) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self).trimmingCharacters(in: .whitespaces)
                buffer.removeSubrange(...newline)
                return line
            }
            guard let chunk = SocketIO.read(fd), !chunk.isEmpty else { return nil }
            buffer += chunk
        }
    }
}
