import CMayflySystem
import Foundation
import Logging
import MayflyCore
import Subprocess
import Synchronization

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// Owns one QEMU process from spawn to reap. The process runs in its own session (a Ctrl-C on
/// the terminal reaches Mayfly, which then stops QEMU in order, instead of killing QEMU first),
/// with an allow-listed environment (no tokens reach it), under `setpriv --pdeathsig KILL` when
/// available (it dies if the agent is killed). Exits are watched by swift-subprocess on a pidfd,
/// not by a blocking wait on the cooperative pool; signals go through this type's own pidfd, so
/// they can never reach a process that reused the pid.
public final class QEMUProcess: Sendable {
    public struct Configuration: Sendable {
        public var executable: String = "qemu-system-x86_64"
        public var arguments: [String]
        public var qmpSocket: String
        /// Wrap in `setpriv --pdeathsig KILL` when setpriv exists.
        public var dieWithAgent = true
        /// How long `start` waits for the QMP socket to answer.
        public var startTimeout: Duration = .seconds(30)

        public init(arguments: [String], qmpSocket: String) {
            self.arguments = arguments
            self.qmpSocket = qmpSocket
        }
    }

    /// How the process ended.
    public enum ExitReason: Sendable, Equatable, CustomStringConvertible {
        case exited(Int32)
        case signaled(Int32)
        case notStarted(String)

        public var description: String {
            switch self {
            case .exited(let code): return "exited with status \(code)"
            case .signaled(let signal): return "killed by signal \(signal)"
            case .notStarted(let reason): return "did not start: \(reason)"
            }
        }
    }

    public let pid: Int32
    public let identity: ProcessIdentity
    public let qmp: QMPClient
    private let monitor: Task<ExitReason, Never>
    private let pidfd: Int32
    private let state: WatchState
    private let logger: Logger

    fileprivate static let stderrLimit = 16 * 1024

    /// What the watching task shares with this object: QEMU's standard error and whether it exited.
    private final class WatchState: Sendable {
        let stderrTail = Mutex<[UInt8]>([])
        let exited = Atomic<Bool>(false)

        func append(_ bytes: UnsafeRawBufferPointer) {
            stderrTail.withLock { buffer in
                buffer.append(contentsOf: bytes)
                if buffer.count > QEMUProcess.stderrLimit { buffer.removeFirst(buffer.count - QEMUProcess.stderrLimit) }
            }
        }
    }

    private init(pid: Int32, pidfd: Int32, qmp: QMPClient, monitor: Task<ExitReason, Never>, state: WatchState, logger: Logger) {
        self.pid = pid
        self.identity =
            ProcessIdentity.of(pid: pid) ?? ProcessIdentity(pid: pid, startTime: 0, bootID: ProcessIdentity.currentBootID())
        self.pidfd = pidfd
        self.qmp = qmp
        self.monitor = monitor
        self.state = state
        self.logger = logger
    }

    deinit {
        if pidfd >= 0 { close(pidfd) }
    }

    /// What QEMU wrote to standard error (the last 16 KiB).
    public var standardError: String { state.stderrTail.withLock { String(decoding: $0, as: UTF8.self) } }
    public var hasExited: Bool { state.exited.load(ordering: .acquiring) }

    /// Spawns QEMU and waits until its QMP socket answers. Throws `qemuFailed` with QEMU's
    /// standard error when it exits before that (the caller classifies lock failures), or when
    /// the socket does not answer within `startTimeout` (QEMU is killed first).
    public static func start(_ configuration: Configuration, logger: Logger) async throws -> QEMUProcess {
        var executable = configuration.executable
        var arguments = configuration.arguments
        if configuration.dieWithAgent, let setpriv = ExecutableLookup.find("setpriv"),
            let qemu = ExecutableLookup.find(configuration.executable)
        {
            executable = setpriv
            arguments = ["--pdeathsig", "KILL", "--", qemu] + arguments
        }
        var options = PlatformOptions()
        options.createSession = true
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        let subprocessConfiguration = Subprocess.Configuration(
            executable: executable.contains("/") ? .path(FilePath(executable)) : .name(executable),
            arguments: Arguments(arguments),
            environment: .custom(["PATH": path, "LC_ALL": "C"]),
            platformOptions: options)

        let state = WatchState()
        let (pids, pidContinuation) = AsyncStream<Int32>.makeStream()
        // Not a child of the caller's task: the process must be watched until it is reaped even
        // when the job that started it is cancelled.
        let monitor = Task<ExitReason, Never>.detached {
            defer {
                state.exited.store(true, ordering: .releasing)
                pidContinuation.finish()
            }
            do {
                let result = try await Subprocess.run(subprocessConfiguration, input: .none, output: .discarded, error: .sequence)
                { execution in
                    pidContinuation.yield(execution.processIdentifier.value)
                    for try await chunk in execution.standardError {
                        chunk.withUnsafeBytes { state.append($0) }
                    }
                }
                switch result.terminationStatus {
                case .exited(let code): return .exited(code)
                case .signaled(let signal): return .signaled(signal)
                }
            } catch {
                return .notStarted("\(error)")
            }
        }
        var iterator = pids.makeAsyncIterator()
        guard let pid = await iterator.next() else {
            let reason = await monitor.value
            throw VMError.qemuFailed(what: "could not be started", detail: reason.description)
        }
        let pidfd = mayfly_pidfd_open(pid)
        let process = QEMUProcess(
            pid: pid, pidfd: pidfd, qmp: QMPClient(socketPath: configuration.qmpSocket), monitor: monitor, state: state,
            logger: logger)

        let clock = ContinuousClock()
        let deadline = clock.now + configuration.startTimeout
        while clock.now < deadline {
            if process.hasExited {
                let reason = await process.wait()
                throw VMError.qemuFailed(what: "exited at start (\(reason))", detail: process.standardError.trimmingWhitespace())
            }
            if FileManager.default.fileExists(atPath: configuration.qmpSocket), await process.qmp.isReady() {
                return process
            }
            do {
                try await Task.sleep(for: .milliseconds(20))
            } catch {
                _ = await process.kill()
                throw error
            }
        }
        _ = await process.kill()
        throw VMError.qemuFailed(
            what: "did not answer on its QMP socket within \(DurationText.format(configuration.startTimeout))",
            detail: process.standardError.trimmingWhitespace())
    }

    /// Waits until QEMU has exited and been reaped; may be called any number of times.
    public func wait() async -> ExitReason { await monitor.value }

    /// Sends `signal` to QEMU (through its pidfd; nothing happens once it has been reaped).
    public func send(signal: Int32) {
        guard !hasExited else { return }
        if pidfd >= 0 {
            _ = mayfly_pidfd_send_signal(pidfd, signal)
        } else {
            Foundation.kill(pid, signal)
        }
    }

    /// Stops QEMU in order: an ACPI power-off the guest can act on (up to `graceful`), then QMP
    /// `quit`, then SIGTERM, then SIGKILL, each with a short wait. Returns how it ended.
    public func stop(graceful: Duration = .seconds(10)) async -> ExitReason {
        if !hasExited, (try? await qmp.execute("system_powerdown")) != nil {
            if await waitForExit(within: graceful) { return await wait() }
            logger.info("the guest did not power off within \(DurationText.format(graceful)); forcing QEMU to quit")
        }
        return await kill()
    }

    /// Ends QEMU now: QMP `quit` (QEMU flushes its image layer), then SIGTERM, then SIGKILL.
    public func kill() async -> ExitReason {
        if !hasExited, (try? await qmp.execute("quit", timeout: .seconds(1))) != nil, await waitForExit(within: .seconds(2)) {
            return await wait()
        }
        send(signal: SIGTERM)
        if await waitForExit(within: .seconds(2)) { return await wait() }
        logger.warning("QEMU (pid \(pid)) ignored SIGTERM; sending SIGKILL")
        send(signal: SIGKILL)
        return await wait()
    }

    /// Whether QEMU exits within `limit`; polls so that it works even from a cancelled task.
    private func waitForExit(within limit: Duration) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + limit
        while !hasExited && clock.now < deadline {
            _ = await BlockingWork.run { usleep(20_000) }
        }
        return hasExited
    }
}
