import CMayflySystem
import Foundation
import MayflyCore
import Subprocess
import Synchronization

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// Owns one helper process (QEMU, passt) from spawn to reap. It runs in its own session (a Ctrl-C
/// on the terminal reaches Mayfly, which then stops it in order), with an allow-listed environment
/// (no tokens reach it), under `setpriv --pdeathsig KILL` when available (it dies if the agent is
/// killed). That signal follows the thread that forked, not the process; swift-subprocess forks
/// on one worker thread of its own that lives as long as the process (tested), never on
/// Dispatch's workers, which retire after a few idle seconds. Exits are watched by swift-subprocess on a pidfd, not by a blocking wait on the
/// cooperative pool; signals go through this type's own pidfd, so they can never reach a process
/// that reused the pid. The last 16 KiB of its standard error are kept for error messages.
public final class SupervisedProcess: Sendable {
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
    private let monitor: Task<ExitReason, Never>
    private let pidfd: Int32
    private let state: WatchState

    static let stderrLimit = 16 * 1024

    /// What the watching task shares with this object: standard error and whether it exited.
    private final class WatchState: Sendable {
        let stderrTail = Mutex<[UInt8]>([])
        let exited = Atomic<Bool>(false)

        func append(_ bytes: UnsafeRawBufferPointer) {
            stderrTail.withLock { buffer in
                buffer.append(contentsOf: bytes)
                if buffer.count > SupervisedProcess.stderrLimit {
                    buffer.removeFirst(buffer.count - SupervisedProcess.stderrLimit)
                }
            }
        }
    }

    private init(pid: Int32, pidfd: Int32, monitor: Task<ExitReason, Never>, state: WatchState) {
        self.pid = pid
        self.identity =
            ProcessIdentity.of(pid: pid) ?? ProcessIdentity(pid: pid, startTime: 0, bootID: ProcessIdentity.currentBootID())
        self.pidfd = pidfd
        self.monitor = monitor
        self.state = state
    }

    deinit {
        if pidfd >= 0 { close(pidfd) }
    }

    /// What the process wrote to standard error (the last 16 KiB).
    public var standardError: String { state.stderrTail.withLock { String(decoding: $0, as: UTF8.self) } }
    public var hasExited: Bool { state.exited.load(ordering: .acquiring) }

    /// Spawns `executable` (a name looked up on PATH, or a path). Returns once it runs; throws
    /// with the reason when it could not be started at all.
    public static func spawn(_ executable: String, arguments: [String], dieWithAgent: Bool = true) async throws(SpawnFailure)
        -> SupervisedProcess
    {
        var program = executable
        var programArguments = arguments
        if dieWithAgent, let setpriv = ExecutableLookup.find("setpriv"), let resolved = ExecutableLookup.find(executable) {
            program = setpriv
            programArguments = ["--pdeathsig", "KILL", "--", resolved] + arguments
        }
        var options = PlatformOptions()
        options.createSession = true
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        let configuration = Subprocess.Configuration(
            executable: program.contains("/") ? .path(FilePath(program)) : .name(program),
            arguments: Arguments(programArguments),
            environment: .custom(["PATH": path, "LC_ALL": "C"]),
            platformOptions: options)

        // A job cancelled before this point starts nothing.
        if Task.isCancelled { throw SpawnFailure(executable: executable, reason: .notStarted("the job was cancelled")) }
        let state = WatchState()
        let started = PIDHandoff()
        // Not a child of the caller's task: the process must be watched until it is reaped even
        // when the job that started it is cancelled.
        let monitor = Task<ExitReason, Never>.detached {
            defer {
                state.exited.store(true, ordering: .releasing)
                started.deliver(nil)
            }
            do {
                let result = try await Subprocess.run(configuration, input: .none, output: .discarded, error: .sequence) {
                    execution in
                    started.deliver(execution.processIdentifier.value)
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
        // Not cancellable: once spawned, the process is handed to the caller (who stops it)
        // even when the caller was cancelled meanwhile; an `AsyncStream` would give up and
        // leave the process running with nobody to stop it.
        guard let pid = await started.value() else {
            throw SpawnFailure(executable: executable, reason: await monitor.value)
        }
        return SupervisedProcess(pid: pid, pidfd: mayfly_pidfd_open(pid), monitor: monitor, state: state)
    }

    /// Hands the new process's pid (or nil: it did not start) from the watching task to
    /// `spawn`, once; waiting for it ignores cancellation.
    private final class PIDHandoff: Sendable {
        private enum Slot {
            case empty
            case waiting(CheckedContinuation<Int32?, Never>)
            case delivered(Int32?)
        }
        private let slot = Mutex<Slot>(.empty)

        func deliver(_ pid: Int32?) {
            let waiter = slot.withLock { slot -> CheckedContinuation<Int32?, Never>? in
                switch slot {
                case .empty:
                    slot = .delivered(pid)
                    return nil
                case .waiting(let continuation):
                    slot = .delivered(pid)
                    return continuation
                case .delivered:
                    return nil
                }
            }
            waiter?.resume(returning: pid)
        }

        func value() async -> Int32? {
            await withCheckedContinuation { continuation in
                let ready = slot.withLock { slot -> Int32?? in
                    switch slot {
                    case .empty, .waiting:
                        slot = .waiting(continuation)
                        return nil
                    case .delivered(let pid):
                        return .some(pid)
                    }
                }
                if let ready { continuation.resume(returning: ready) }
            }
        }
    }

    /// Waits until the process has exited and been reaped; may be called any number of times.
    public func wait() async -> ExitReason { await monitor.value }

    /// How a wait for a freshly started process to become usable ended.
    public enum Readiness: Sendable, Equatable {
        case ready
        case exited(ExitReason)
        case timedOut
    }

    /// Polls `isReady` every `interval` until it holds, the process exits, or `timeout` passes.
    /// A cancelled wait throws at once; the caller, which owns the process, stops it.
    public func waitUntilReady(
        timeout: Duration, interval: Duration = .milliseconds(20), _ isReady: () async -> Bool
    ) async throws(CancellationError) -> Readiness {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if hasExited { return .exited(await wait()) }
            if await isReady() { return .ready }
            do { try await Task.sleep(for: interval) } catch { throw CancellationError() }
        }
        return .timedOut
    }

    /// Sends `signal` (through the pidfd; nothing happens once the process has been reaped).
    public func send(signal: Int32) {
        guard !hasExited else { return }
        if pidfd >= 0 {
            _ = mayfly_pidfd_send_signal(pidfd, signal)
        } else {
            Foundation.kill(pid, signal)
        }
    }

    /// SIGTERM, then SIGKILL when it is still there after `grace`. Returns how it ended.
    public func terminate(grace: Duration = .seconds(2), onKill: () -> Void = {}) async -> ExitReason {
        send(signal: SIGTERM)
        if await waitForExit(within: grace) { return await wait() }
        onKill()
        send(signal: SIGKILL)
        return await wait()
    }

    /// Whether the process exits within `limit`; polls so that it works even from a cancelled task.
    public func waitForExit(within limit: Duration) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + limit
        while !hasExited && clock.now < deadline {
            _ = await BlockingWork.run { usleep(20_000) }
        }
        return hasExited
    }

    /// A process that could not be started.
    public struct SpawnFailure: Error, Sendable, CustomStringConvertible {
        public let executable: String
        public let reason: ExitReason
        public var description: String { "\(executable) \(reason)" }
    }
}
