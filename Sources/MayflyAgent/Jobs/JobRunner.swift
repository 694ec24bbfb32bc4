import Foundation
import Logging
import MayflyCore
import MayflyGuest
import MayflyVM

/// The steps of a job, in order. Every failure and cancellation goes to `cleanup`.
public enum JobPhase: String, Sendable, CaseIterable {
    case clone, grace, lock, boot, connect, script
    case afterScript = "after_script"
    case cleanup

    init(_ phase: VMPhase) {
        switch phase {
        case .clone: self = .clone
        case .grace: self = .grace
        case .lock: self = .lock
        case .boot: self = .boot
        case .cleanup: self = .cleanup
        }
    }
}

/// What the runner tells its caller while a job runs (for progress displays).
public enum JobEvent: Sendable {
    case started(JobPhase)
    case finished(JobPhase, Duration)
}

/// How a job went, with the time spent in each phase.
public struct JobReport: Sendable {
    public var outcome: JobOutcome
    /// Attempts the auxiliary-storage lock needed (0 when no VM was started).
    public var lockAttempts = 0
    public var timings: [(phase: JobPhase, duration: Duration)] = []
    public var total: Duration = .zero

    public func duration(of phase: JobPhase) -> Duration? {
        timings.first { $0.phase == phase }?.duration
    }
}

/// Runs one job in a fresh VM, as one state machine: clone → grace → lock → boot → connect →
/// script → after_script → cleanup. The VM layer guarantees the clone and QEMU are gone on
/// every path; this type maps each failure to a `JobOutcome` and writes the job's log: a header
/// (bundle, clone strategy, accelerator, Mayfly version), the output, the result, and the time
/// spent in each phase.
public struct JobRunner: Sendable {
    public let configuration: Configuration
    let logger: Logger
    let runtimeBase: String
    let kvm: KVMAssessment
    let warmPool: WarmPool?

    public init(
        configuration: Configuration, logger: Logger, runtimeBase: String = RuntimeDirectory.base(),
        kvm: KVMAssessment = .assess(), warmPool: WarmPool? = nil
    ) {
        self.configuration = configuration
        self.logger = logger
        self.runtimeBase = runtimeBase
        self.kvm = kvm
        self.warmPool = warmPool
    }

    /// The VM options the configuration asks for.
    public var vmOptions: VMOptions {
        var options = VMOptions()
        options.cpus = configuration.vm.cpus
        options.memory = configuration.vm.memory
        options.accelerator = configuration.vm.accelerator
        options.clone = configuration.vm.clone
        options.gracePeriod = configuration.vm.gracePeriod
        options.lockRetry = configuration.vm.lockRetry
        options.bootTimeout = configuration.vm.bootTimeout
        options.network = configuration.vm.network
        return options
    }

    /// The timeout that applies: the job's own, capped by `job.timeout`.
    public func effectiveTimeout(for job: Job) -> Duration {
        min(job.timeout ?? configuration.job.timeout, configuration.job.timeout)
    }

    /// Runs `job` for `server` (a name for the clone key; "local" for exec), writing to `log`.
    /// `control` carries a graceful cancel (stop the script, still run after_script); cancelling
    /// the calling task stops everything. Never throws: every way a job can end is an outcome,
    /// and the log says why.
    public func run(
        _ job: Job, server: String, log: JobLog, control: JobControl = JobControl(),
        events: @escaping @Sendable (JobEvent) -> Void = { _ in }
    ) async -> JobReport {
        let jobLogger = {
            var logger = self.logger
            logger[metadataKey: "job.id"] = "\(job.id)"
            return logger
        }()
        let clock = ContinuousClock()
        let started = clock.now
        let recorder = PhaseClock(events: events)
        let timeout = effectiveTimeout(for: job)
        await log.line("Running with mayfly \(MayflyVersion.current) on \(configuration.name), job \(job.id)")
        for notice in job.notices { await log.line("WARNING: \(notice)") }

        let outcome: JobOutcome
        do {
            let bundle = try locateBundle(for: job)
            await log.line("Preparing a VM from bundle \(bundle.manifest.name) (\(bundle.path))")
            outcome = try await withJobTimeout(timeout) {
                try await runInVM(
                    control: control,
                    job, bundle: bundle, server: server, log: log, recorder: recorder, logger: jobLogger, timeout: timeout)
            }
        } catch let error as TimedOut {
            outcome = .timedOut(after: error.after)
        } catch is CancellationError {
            outcome = .cancelled
        } catch {
            outcome = .systemFailure("\(error)")
        }
        recorder.finishOpenPhases()
        await log.finish()
        var report = JobReport(outcome: outcome, timings: recorder.timings, total: clock.now - started)
        report.lockAttempts = recorder.lockAttempts
        report.timings.sort { JobPhase.allCases.firstIndex(of: $0.phase)! < JobPhase.allCases.firstIndex(of: $1.phase)! }
        await writeFooter(report, log: log)
        jobLogger.info("job \(outcome)", metadata: ["job.duration": "\(DurationText.seconds(report.total))"])
        return report
    }

    private func locateBundle(for job: Job) throws -> BundleDirectory {
        guard let name = job.bundle ?? configuration.vm.bundle else {
            throw VMError.bundle(path: "(none)", problem: "no bundle: set vm.bundle in the configuration, or bundle in the job")
        }
        return try BundleDirectory.locate(name, bundlesDirectory: configuration.bundlesDirectory)
    }

    private func runInVM(
        control: JobControl,
        _ job: Job, bundle: BundleDirectory, server: String, log: JobLog, recorder: PhaseClock, logger: Logger, timeout: Duration
    ) async throws -> JobOutcome {
        let launcher = VMLauncher(
            workDirectory: configuration.workDirectory, options: vmOptions, logger: logger, runtimeBase: runtimeBase,
            kvm: kvm)
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        let lifetime = timeout + job.afterScriptTimeout + vmOptions.bootTimeout + .seconds(300)
        let onPhase: @Sendable (VMPhase, Duration?) -> Void = { phase, duration in
            if let duration { recorder.finish(JobPhase(phase), duration) } else { recorder.start(JobPhase(phase)) }
        }
        let running: RunningVM
        var warm = await warmPool?.take(for: bundle)
        switch warm {
        case .booted(let vm)?:
            do {
                running = try await launcher.adopt(vm, server: server, job: job.id, lifetime: lifetime)
                await log.line("Using a VM from the warm pool (already booted)")
                for phase in [VMPhase.clone, .grace, .lock, .boot] {
                    onPhase(phase, nil)
                    onPhase(phase, .zero)
                }
            } catch {
                // The warm VM is gone (adopt stopped it); the job still gets a VM.
                if Task.isCancelled { throw error }
                await log.line("The warm pool's VM could not be taken over (\(error)); preparing a fresh one")
                warm = nil
                running = try await launcher.start(
                    bundle: bundle, server: server, job: job.id, lifetime: lifetime, onPhase: onPhase)
            }
        case .clone(let made)?:
            await log.line("Using a clone from the warm pool")
            running = try await launcher.start(
                bundle: bundle, server: server, job: job.id, lifetime: lifetime, prepared: made, onPhase: onPhase)
        case nil:
            running = try await launcher.start(bundle: bundle, server: server, job: job.id, lifetime: lifetime, onPhase: onPhase)
        }
        // A booted warm guest was logged in to when the pool made it: no connect phase.
        let prebooted: Bool
        if case .booted? = warm { prebooted = true } else { prebooted = false }
        return try await launcher.run(running, onPhase: onPhase) { vm in
            await log.line(
                "Using bundle \(vm.bundle.manifest.name), cloned by \(vm.cloneStrategy.rawValue), accelerator \(vm.accelerator.rawValue), mayfly \(MayflyVersion.current)"
            )
            recorder.lockAttempts = vm.timings.lockAttempts
            if vm.timings.lockAttempts > 1 {
                await log.line("The auxiliary-storage lock was busy: took it on attempt \(vm.timings.lockAttempts)")
            }
            recorder.start(.connect)
            if !prebooted {
                // `boot_timeout` runs from QEMU's start to a usable guest: the boot phase used part of it.
                let left = max(.seconds(1), vmOptions.bootTimeout - vm.timings.boot)
                _ = try await GuestConnection.waitUntilReady(
                    vm.ssh, timeout: left, cloudInit: vm.bundle.manifest.guest.provision == .cloudInit)
            }
            recorder.finish(.connect)

            let runner = ScriptRunner(endpoint: vm.ssh, logger: logger)
            let workdir = job.workingDirectory ?? vm.bundle.manifest.guest.workdir
            recorder.start(.script)
            let remaining = max(.milliseconds(1), deadline - clock.now)
            var mainScript = GuestScript(lines: job.script, variables: job.variables, workingDirectory: workdir)
            mainScript.prologue = job.prologue
            // The main script races a graceful cancel from the server: that stops the script only.
            let script = mainScript
            let main = try await withThrowingTaskGroup(of: ScriptRunner.Outcome?.self) { group in
                group.addTask { try await runner.run(script, timeout: remaining) { bytes in await log.write(bytes) } }
                group.addTask {
                    await control.waitForGracefulCancel()
                    return nil
                }
                let first = try await group.next()!
                group.cancelAll()
                return first
            }
            recorder.finish(.script)
            await log.finish()

            let outcome: JobOutcome
            switch main {
            case .exited(let status)?: outcome = .exited(status)
            case .timedOut?: throw TimedOut(after: timeout)
            case .transportFailed(let reason)?:
                throw GuestError.unreachable(endpoint: "\(vm.ssh.host):\(vm.ssh.port)", lastError: reason)
            case nil:
                await log.line("The job was cancelled: the script was stopped")
                outcome = .cancelled
            }

            if !job.afterScript.isEmpty {
                recorder.start(.afterScript)
                await log.line("Running after_script")
                let after = try await runner.run(
                    GuestScript(lines: job.afterScript, variables: job.variables, workingDirectory: workdir),
                    timeout: job.afterScriptTimeout
                ) { bytes in await log.write(bytes) }
                await log.finish()
                switch after {
                case .exited(0): break
                case .exited(let status): await log.line("WARNING: after_script failed with exit status \(status) (ignored)")
                case .timedOut:
                    await log.line(
                        "WARNING: after_script timed out after \(DurationText.format(job.afterScriptTimeout)) (ignored)")
                case .transportFailed(let reason): await log.line("WARNING: after_script could not finish: \(reason) (ignored)")
                }
                recorder.finish(.afterScript)
            }
            return outcome
        }
    }

    private func writeFooter(_ report: JobReport, log: JobLog) async {
        switch report.outcome {
        case .exited(0): await log.line("Job succeeded")
        case .exited(let status): await log.line("ERROR: Job failed: exit status \(status)")
        case .timedOut(let after): await log.line("ERROR: Job failed: execution took longer than \(DurationText.format(after))")
        case .cancelled: await log.line("ERROR: Job was cancelled")
        case .systemFailure(let reason): await log.line("ERROR: Job failed (system failure): \(reason)")
        }
        let parts = report.timings.map { "\($0.phase.rawValue) \(DurationText.seconds($0.duration))" }
        await log.line("Timings: " + (parts + ["total \(DurationText.seconds(report.total))"]).joined(separator: ", "))
        await log.finish()
    }

    /// Runs `body`, cancelling it when `timeout` passes (then throws `TimedOut`).
    private func withJobTimeout<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws
        -> T
    {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            do {
                guard let value = try await group.next()! else {
                    group.cancelAll()
                    // Let the VM layer finish its cleanup before reporting.
                    while let next = try? await group.next() { _ = next }
                    throw TimedOut(after: timeout)
                }
                return value
            } catch is CancellationError where !Task.isCancelled {
                throw TimedOut(after: timeout)
            }
        }
    }
}

/// The job's time limit passed.
struct TimedOut: Error {
    let after: Duration
}

/// Records when each phase starts and ends, and passes the events on.
final class PhaseClock: @unchecked Sendable {
    private let lock = NSLock()
    private var attempts = 0
    var lockAttempts: Int {
        get { lock.withLock { attempts } }
        set { lock.withLock { attempts = newValue } }
    }
    private var starts: [JobPhase: ContinuousClock.Instant] = [:]
    private var recorded: [(phase: JobPhase, duration: Duration)] = []
    private let events: @Sendable (JobEvent) -> Void

    init(events: @escaping @Sendable (JobEvent) -> Void) { self.events = events }

    var timings: [(phase: JobPhase, duration: Duration)] { lock.withLock { recorded } }

    func start(_ phase: JobPhase) {
        lock.withLock { starts[phase] = ContinuousClock.now }
        events(.started(phase))
    }

    func finish(_ phase: JobPhase, _ measured: Duration? = nil) {
        let duration: Duration? = lock.withLock {
            guard let start = starts.removeValue(forKey: phase) else { return measured }
            return measured ?? (ContinuousClock.now - start)
        }
        guard let duration else { return }
        lock.withLock {
            recorded.removeAll { $0.phase == phase }
            recorded.append((phase, duration))
        }
        events(.finished(phase, duration))
    }

    /// Ends the phases a failure or cancellation interrupted, so that their time is reported too.
    func finishOpenPhases() {
        let open: [JobPhase] = lock.withLock { Array(starts.keys) }
        for phase in open { finish(phase) }
    }
}
