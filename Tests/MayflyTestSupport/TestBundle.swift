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
