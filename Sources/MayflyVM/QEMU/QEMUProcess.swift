import Foundation
import Logging
import MayflyCore

/// Owns one QEMU process from spawn to reap (through a `SupervisedProcess`: own session,
/// allow-listed environment, `setpriv --pdeathsig KILL`, signals through its pidfd) and talks to
/// it over QMP: `start` returns once QMP answers, `stop` powers the guest off in order.
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

    public typealias ExitReason = SupervisedProcess.ExitReason

    public let qmp: QMPClient
    private let process: SupervisedProcess
    private let logger: Logger

    public var pid: Int32 { process.pid }
    public var identity: ProcessIdentity { process.identity }

    private init(process: SupervisedProcess, qmp: QMPClient, logger: Logger) {
        self.process = process
        self.qmp = qmp
        self.logger = logger
    }

    /// What QEMU wrote to standard error (the last 16 KiB).
    public var standardError: String { process.standardError }
    public var hasExited: Bool { process.hasExited }

    /// Spawns QEMU and waits until its QMP socket answers. Throws `qemuFailed` with QEMU's
    /// standard error when it exits before that (the caller classifies lock failures), or when
    /// the socket does not answer within `startTimeout` (QEMU is killed first).
    /// `spawned` hears of the process as soon as it runs, before QMP answers (the caller records it
    /// for crash recovery).
    public static func start(
        _ configuration: Configuration, logger: Logger, spawned onSpawn: (ProcessIdentity) -> Void = { _ in }
    ) async throws -> QEMUProcess {
        let spawned: SupervisedProcess
        do {
            spawned = try await SupervisedProcess.spawn(
                configuration.executable, arguments: configuration.arguments, dieWithAgent: configuration.dieWithAgent)
        } catch {
            throw VMError.qemuFailed(what: "could not be started", detail: error.reason.description)
        }
        onSpawn(spawned.identity)
        let process = QEMUProcess(process: spawned, qmp: QMPClient(socketPath: configuration.qmpSocket), logger: logger)
        let readiness: SupervisedProcess.Readiness
        do {
            readiness = try await spawned.waitUntilReady(timeout: configuration.startTimeout) {
                FileManager.default.fileExists(atPath: configuration.qmpSocket) ? await process.qmp.isReady() : false
            }
        } catch {
            _ = await process.kill()
            throw error
        }
        switch readiness {
        case .ready:
            return process
        case .exited(let reason):
            throw VMError.qemuFailed(what: "exited at start (\(reason))", detail: process.standardError.trimmingWhitespace())
        case .timedOut:
            _ = await process.kill()
            throw VMError.qemuFailed(
                what: "did not answer on its QMP socket within \(DurationText.format(configuration.startTimeout))",
                detail: process.standardError.trimmingWhitespace())
        }
    }

    /// Waits until QEMU has exited and been reaped; may be called any number of times.
    public func wait() async -> ExitReason { await process.wait() }

    /// Sends `signal` to QEMU (through its pidfd; nothing happens once it has been reaped).
    public func send(signal: Int32) { process.send(signal: signal) }

    /// Stops QEMU in order: an ACPI power-off the guest can act on (up to `graceful`), then QMP
    /// `quit`, then SIGTERM, then SIGKILL, each with a short wait. Returns how it ended.
    public func stop(graceful: Duration = .seconds(10)) async -> ExitReason {
        if !hasExited, (try? await qmp.execute("system_powerdown")) != nil {
            if await process.waitForExit(within: graceful) { return await wait() }
            logger.info("the guest did not power off within \(DurationText.format(graceful)); forcing QEMU to quit")
        }
        return await kill()
    }

    /// Ends QEMU now: QMP `quit` (QEMU flushes its image layer), then SIGTERM, then SIGKILL.
    public func kill() async -> ExitReason {
        if !hasExited, (try? await qmp.execute("quit", timeout: .seconds(1))) != nil,
            await process.waitForExit(within: .seconds(2))
        {
            return await wait()
        }
        let pid = self.pid
        let logger = self.logger
        return await process.terminate(grace: .seconds(2)) {
            logger.warning("QEMU (pid \(pid)) ignored SIGTERM; sending SIGKILL")
        }
    }
}
