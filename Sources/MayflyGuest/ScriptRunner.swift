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
        let arguments = SSHCommand(endpoint: endpoint).arguments(
            remoteCommand: GuestScript.remoteCommand, forwardingHostPorts: true)
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
    /// With `cloudInit`, it then also waits (within the same `timeout`) until cloud-init has
    /// finished in the guest: the first login can succeed while cloud-init's later stages still
    /// run, and a job must not race them.
    public static func waitUntilReady(_ endpoint: SSHEndpoint, timeout: Duration, cloudInit: Bool = false) async throws
        -> Duration
    {
        let clock = ContinuousClock()
        let started = clock.now
        var lastError = ""
        var command = SSHCommand(endpoint: endpoint)
        command.connectTimeout = .seconds(5)
        while clock.now - started < timeout {
            var loggedIn = false
            do {
                let result = try await command.run("true", timeout: .seconds(15))
                loggedIn = result.succeeded
                lastError = result.standardError.trimmingWhitespace()
            } catch {
                lastError = error.description
            }
            if loggedIn {
                if cloudInit { try await waitForCloudInit(command, timeout: max(.seconds(1), timeout - (clock.now - started))) }
                return clock.now - started
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        throw GuestError.unreachable(endpoint: "\(endpoint.user)@\(endpoint.host):\(endpoint.port)", lastError: lastError)
    }
}

extension GuestConnection {
    /// Runs `cloud-init status --wait`. Status 0 is done; 2 is done with recoverable errors
    /// (common in stock images: a datasource or module that does not apply), which is fine for
    /// running jobs; anything else (cloud-init failed, or not installed) is an error.
    static func waitForCloudInit(_ command: SSHCommand, timeout: Duration) async throws(GuestError) {
        let result: CommandRunner.Output
        do {
            result = try await command.run("cloud-init status --wait >/dev/null; echo \"cloud-init: $?\"", timeout: timeout)
        } catch {
            throw .provisioningFailed(detail: "cloud-init status --wait: \(error.description)")
        }
        let status = result.standardOutput.split(separator: "\n").last { $0.hasPrefix("cloud-init: ") }.map {
            String($0.dropFirst("cloud-init: ".count))
        }
        guard status == "0" || status == "2" else {
            throw .provisioningFailed(
                detail: "cloud-init status --wait "
                    + (status.map { "exited with \($0)" } ?? "did not run (\(result.standardError.trimmingWhitespace()))"))
        }
    }
}

/// Failures reaching or using the guest.
public enum GuestError: Error, Sendable, CustomStringConvertible {
    case unreachable(endpoint: String, lastError: String)
    case provisioningFailed(detail: String)

    public var description: String {
        switch self {
        case .unreachable(let endpoint, let lastError):
            return "cannot log in to the guest at \(endpoint) over SSH" + (lastError.isEmpty ? "" : ": \(lastError)")
        case .provisioningFailed(let detail):
            return "the guest's cloud-init did not finish: \(detail)"
        }
    }
}
