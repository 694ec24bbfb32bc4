import Foundation
import Logging
import MayflyCore
import MayflyVM
import Subprocess

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// Runs a `GuestScript` in a booted guest through the OpenSSH client and streams its output as it
/// is produced. The consumer is awaited for each chunk, so a slow consumer slows the reading of
/// ssh's pipe (and so the guest) instead of piling output up in memory.
public struct ScriptRunner: Sendable {
    public let endpoint: SSHEndpoint
    let logger: Logger

    public init(endpoint: SSHEndpoint, logger: Logger) {
        self.endpoint = endpoint
        self.logger = logger
    }

    /// How a script run ended.
    public enum Outcome: Sendable, Equatable {
        /// The script ran and exited with this status.
        case exited(Int32)
        /// The time limit passed; ssh was stopped (the guest goes with its VM).
        case timedOut
        /// The connection failed before the script reported its status.
        case transportFailed(String)
    }

    /// Runs `script`, handing each chunk of output to `output`. Cancelling the calling task stops
    /// ssh and throws `CancellationError`.
    public func run(
        _ script: GuestScript, timeout: Duration, output: @escaping @Sendable ([UInt8]) async -> Void
    ) async throws -> Outcome {
        let text = try script.render()
        let arguments = SSHCommand(endpoint: endpoint).arguments(remoteCommand: GuestScript.remoteCommand)
        var options = PlatformOptions()
        // On cancellation or timeout: SIGTERM, then SIGKILL 200 ms later.
        options.teardownSequence = [.gracefulShutDown(allowedDurationToNextStep: .milliseconds(200))]
        options.processGroupID = 0
        let configuration = Subprocess.Configuration(
            executable: .name("ssh"), arguments: Arguments(arguments),
            environment: .custom(["PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"]), platformOptions: options)
        let input = Array(text.utf8)

        let result: (status: TerminationStatus, stderr: String)? = try await withThrowingTaskGroup(
            of: (status: TerminationStatus, stderr: String)?.self
        ) { group in
            group.addTask {
                let execution = try await Subprocess.run(
                    configuration, input: .array(input), output: .sequence, error: .string(limit: 64 * 1024)
                ) { execution in
                    for try await chunk in execution.standardOutput {
                        let bytes = chunk.withUnsafeBytes { Array($0) }
                        await output(bytes)
                    }
                }
                return (execution.terminationStatus, execution.standardError)
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
        try Task.checkCancellation()
        guard let result else { return .timedOut }
        if let status = GuestScript.status(fromStandardError: result.stderr) { return .exited(status) }
        let message = result.stderr.split(separator: "\n").filter { !$0.hasPrefix(GuestScript.statusTrailer) }.joined(
            separator: "; ")
        return .transportFailed(
            "ssh \(result.status): \(message.isEmpty ? "the connection ended before the script reported its status" : message)")
    }
}

/// Waits until a guest accepts SSH logins with the pinned key (the banner can come before the
/// server is ready to authenticate), bounded by `timeout`.
public enum GuestConnection {
    public static func waitUntilReady(_ endpoint: SSHEndpoint, timeout: Duration) async throws -> Duration {
        let clock = ContinuousClock()
        let started = clock.now
        var lastError = ""
        var command = SSHCommand(endpoint: endpoint)
        command.connectTimeout = .seconds(5)
        while clock.now - started < timeout {
            do {
                let result = try await command.run("true", timeout: .seconds(15))
                if result.succeeded { return clock.now - started }
                lastError = result.standardError.trimmingWhitespace()
            } catch {
                lastError = error.description
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        throw GuestError.unreachable(endpoint: "\(endpoint.user)@\(endpoint.host):\(endpoint.port)", lastError: lastError)
    }
}

/// Failures reaching or using the guest.
public enum GuestError: Error, Sendable, CustomStringConvertible {
    case unreachable(endpoint: String, lastError: String)

    public var description: String {
        switch self {
        case .unreachable(let endpoint, let lastError):
            return "cannot log in to the guest at \(endpoint) over SSH" + (lastError.isEmpty ? "" : ": \(lastError)")
        }
    }
}
