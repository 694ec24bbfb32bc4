import Foundation

/// The tiny test-guest bundle that `deploy/images/tiny/build.sh` makes (`deploy/test.sh` builds it
/// before the tests run). `MAYFLY_TEST_BUNDLE` points elsewhere.
public enum TestBundle {
    public static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    public struct Missing: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    public static func tinyPath() throws -> String {
        let path =
            ProcessInfo.processInfo.environment["MAYFLY_TEST_BUNDLE"]
            ?? repositoryRoot.appendingPathComponent(".images/tiny").path
        guard FileManager.default.fileExists(atPath: path + "/bundle.yaml") else {
            throw Missing(
                description: "the tiny test bundle is not built at \(path); run deploy/images/tiny/build.sh (deploy/test.sh does)"
            )
        }
        return path
    }

    /// The UEFI variant (`build.sh --boot uefi`): OVMF firmware with a per-clone NVRAM.
    public static func tinyUEFIPath() throws -> String {
        let path =
            ProcessInfo.processInfo.environment["MAYFLY_TEST_UEFI_BUNDLE"]
            ?? repositoryRoot.appendingPathComponent(".images/tiny-uefi").path
        guard FileManager.default.fileExists(atPath: path + "/bundle.yaml") else {
            throw Missing(
                description:
                    "the UEFI test bundle is not built at \(path); run deploy/images/tiny/build.sh --boot uefi (deploy/test.sh does)"
            )
        }
        return path
    }

    /// A private copy of the tiny bundle in `directory` (for tests that hold locks on or change
    /// the golden files); large files are reflinked or copied sparsely.
    public static func copyTiny(into directory: URL) throws -> String {
        let source = try tinyPath()
        let destination = directory.appendingPathComponent("tiny-copy").path
        try run("/bin/cp", ["-r", "--reflink=auto", "--sparse=always", source, destination])
        try run("/bin/chmod", ["-R", "u+w", destination])
        return destination
    }

    /// Runs a command to completion and returns its standard output (and error, merged), trimmed;
    /// throws with that output if it fails.
    @discardableResult
    public static func output(_ executable: String, _ arguments: [String], in directory: URL? = nil) throws -> String {
        let pipe = Pipe()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = directory }
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard process.terminationStatus == 0 else {
            throw Missing(
                description: "\(executable) \(arguments.joined(separator: " ")) exited \(process.terminationStatus): \(text)")
        }
        return text
    }

    /// A free TCP port on 127.0.0.1 (bound to port 0 and released at once).
    public static func freeLoopbackPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Missing(description: "no socket for a free port") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else { throw Missing(description: "no free port on 127.0.0.1") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Runs a command to completion, throwing if it fails.
    public static func run(_ executable: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Missing(description: "\(executable) \(arguments.joined(separator: " ")) exited \(process.terminationStatus)")
        }
    }
}

/// A child process a test starts and kills (a lock holder, a stand-in agent), killed at the
/// latest when the value is released.
public final class TestChild: @unchecked Sendable {
    public let process: Process

    public init(_ executable: String, _ arguments: [String]) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }

    public func kill() {
        if process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    deinit { kill() }
}
