import Subprocess

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// Runs a short-lived helper command (`qemu-img`, `ssh -V`, `qemu-system-x86_64 --version`) to
/// completion and collects its output, with a deadline. Long-lived children (QEMU itself, the
/// job's SSH session) have owners of their own; this is for commands that answer and exit.
public enum CommandRunner {
    public struct Output: Sendable {
        public let executable: String
        public let status: String
        public let succeeded: Bool
        public let exitCode: Int32?
        public let standardOutput: String
        public let standardError: String

        /// Throws a `Failure` unless the command exited 0.
        public func check() throws(Failure) -> Output {
            guard succeeded else { throw Failure(executable: executable, reason: status, standardError: standardError) }
            return self
        }
    }

    /// A command that could not be started, timed out, or exited unsuccessfully.
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let executable: String
        public let reason: String
        public let standardError: String

        public var description: String {
            let detail = standardError.trimmingWhitespace()
            return "\(executable) \(reason)" + (detail.isEmpty ? "" : ": \(detail)")
        }
    }

    /// Runs `executable` (a name looked up on PATH, or a path) with `arguments`.
    public static func run(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
        timeout: Duration = .seconds(60), outputLimit: Int = 1 << 20
    ) async throws(Failure) -> Output {
        let configuration = Configuration(
            executable: executable.contains("/") ? .path(FilePath(executable)) : .name(executable),
            arguments: Arguments(arguments),
            environment: environment.map { values in
                .custom(Dictionary(uniqueKeysWithValues: values.map { (Environment.Key(rawValue: $0.key)!, $0.value) }))
            } ?? .inherit)
        do {
            return try await withThrowingTaskGroup(of: Output?.self) { group in
                group.addTask {
                    var options = PlatformOptions()
                    options.teardownSequence = [.gracefulShutDown(allowedDurationToNextStep: .milliseconds(500))]
                    var configured = configuration
                    configured.platformOptions = options
                    let result = try await Subprocess.run(
                        configured, output: .string(limit: outputLimit), error: .string(limit: outputLimit))
                    let exitCode: Int32?
                    let status: String
                    switch result.terminationStatus {
                    case .exited(let code):
                        exitCode = code
                        status = "exited with status \(code)"
                    case .signaled(let signal):
                        exitCode = nil
                        status = "was killed by signal \(signal)"
                    }
                    return Output(
                        executable: executable, status: status, succeeded: result.terminationStatus.isSuccess,
                        exitCode: exitCode, standardOutput: result.standardOutput ?? "",
                        standardError: result.standardError ?? "")
                }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    return nil
                }
                let first = try await group.next()!
                group.cancelAll()
                guard let output = first else {
                    throw Failure(
                        executable: executable, reason: "did not finish within \(DurationText.format(timeout))", standardError: ""
                    )
                }
                return output
            }
        } catch let failure as Failure {
            throw failure
        } catch is CancellationError {
            throw Failure(executable: executable, reason: "was cancelled", standardError: "")
        } catch {
            throw Failure(executable: executable, reason: "could not be run (\(error))", standardError: "")
        }
    }
}
