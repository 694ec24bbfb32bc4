import Foundation
import Logging
import MayflyCore
import MayflyVM
import Synchronization

/// `mayfly run`: takes jobs from every configured server and runs up to `concurrency` of them at
/// once, each in its own VM. A poll loop per server asks for work while a slot is free (at once
/// again after a job, after the server's wait otherwise). `stopAcceptingJobs()` ends the loops
/// at once — an open long poll is abandoned — and lets running jobs finish; `cancelRunningJobs()`
/// stops them (they are reported as system failures, with a line in their log saying why).
public final class RunnerDaemon: Sendable {
    let logger: Logger
    let slots: JobSlots

    private struct RunningJob {
        let task: Task<Void, Never>
        let log: JobLog
        let shutdown: @Sendable () -> Void
    }

    private struct State {
        var configuration: Configuration
        var sources: [any JobSource]
        var accepting = true
        var pollers: [Task<Void, Never>] = []
        var jobs: [Int: RunningJob] = [:]
        var nextJob = 0
        var pool: WarmPool?
        var poolKey: String?
        var started = false
    }

    private let state: Mutex<State>

    /// Clones of `vm.bundle` made ahead of jobs (`warm_pool.size` > 0). A reload that changes
    /// the bundle or the VM settings replaces the pool (the old one is emptied); one that only
    /// changes its size, age or boot mode resizes it.
    public var warmPool: WarmPool? { state.withLock { $0.pool } }

    public init(configuration: Configuration, sources: [any JobSource], logger: Logger) {
        self.logger = logger
        slots = JobSlots(configuration.concurrency)
        var initial = State(configuration: configuration, sources: sources)
        if let (pool, key) = Self.makePool(configuration, logger: logger) {
            initial.pool = pool
            initial.poolKey = key
        }
        state = Mutex(initial)
    }

    /// A warm pool for `configuration`, and what it depends on (the bundle and VM settings), or
    /// nil when the configuration has none.
    private static func makePool(_ configuration: Configuration, logger: Logger) -> (WarmPool, String)? {
        guard configuration.warmPool.size > 0, let name = configuration.vm.bundle,
            let bundle = try? BundleDirectory.locate(name, bundlesDirectory: configuration.bundlesDirectory)
        else { return nil }
        let options = JobRunner(configuration: configuration, logger: logger).vmOptions
        let launcher = VMLauncher(workDirectory: configuration.workDirectory, options: options, logger: logger)
        let pool = WarmPool(
            launcher: launcher, bundle: bundle, size: configuration.warmPool.size, maxAge: configuration.warmPool.maxAge,
            boot: configuration.warmPool.boot, logger: logger)
        return (pool, "\(bundle.path)|\(configuration.workDirectory)|\(options)")
    }

    /// The configuration new jobs get (it changes on reload).
    public var configuration: Configuration { state.withLock { $0.configuration } }
    public var sources: [any JobSource] { state.withLock { $0.sources } }

    /// Applies a reloaded configuration: new concurrency, servers and poll intervals take effect
    /// for new requests and new jobs; running jobs go on untouched. Open job requests are
    /// abandoned and asked again with the new settings.
    public func reconfigure(_ configuration: Configuration, sources: [any JobSource]) {
        slots.resize(to: configuration.concurrency)
        // The new pollers replace the old ones in one step, so that `run` never sees a moment
        // without pollers while the agent is still taking jobs.
        let fresh = sources.map { source in Task { await self.poll(source) } }
        let (old, accepting) = state.withLock { state -> ([Task<Void, Never>], Bool) in
            let old = state.pollers
            state.configuration = configuration
            state.sources = sources
            state.pollers = state.accepting ? fresh : []
            return (old, state.accepting)
        }
        for poller in old { poller.cancel() }
        if !accepting { for poller in fresh { poller.cancel() } }
        reconfigurePool(configuration)
        guard accepting else { return }
        logger.info("configuration reloaded: \(sources.count) server(s), concurrency \(configuration.concurrency)")
    }

    private func reconfigurePool(_ configuration: Configuration) {
        let made = Self.makePool(configuration, logger: logger)
        let (keep, retired, fresh, started) = state.withLock {
            state -> (WarmPool?, WarmPool?, WarmPool?, Bool) in
            // Shutting down: the pool is being emptied, and no new one is made.
            guard state.accepting else { return (nil, nil, nil, false) }
            if let current = state.pool, made?.1 == state.poolKey { return (current, nil, nil, state.started) }
            let retired = state.pool
            state.pool = made?.0
            state.poolKey = made?.1
            return (nil, retired, made?.0, state.started)
        }
        let size = configuration.warmPool
        Task {
            if let keep { await keep.resize(size: size.size, maxAge: size.maxAge, boot: size.boot) }
            if let retired {
                logger.info("the warm pool's bundle or VM settings changed: emptying the old pool")
                await retired.stop()
            }
            if started, let fresh { await fresh.start() }
        }
    }

    /// Whether the agent is asking for jobs and at least one server answered lately (`/health`).
    public func health() -> (healthy: Bool, detail: String) {
        let (accepting, sources, running) = state.withLock { ($0.accepting, $0.sources, $0.jobs.count) }
        let servers = sources.map { "\"\($0.name)\": \($0.isHealthy)" }.joined(separator: ", ")
        let healthy = accepting && sources.contains { $0.isHealthy }
        return (healthy, "{\"polling\": \(accepting), \"running_jobs\": \(running), \"servers\": {\(servers)}}\n")
    }

    public var runningJobs: Int { state.withLock { $0.jobs.count } }

    /// How often clones of dead owners are reaped and undelivered spooled jobs retried.
    public static let maintenanceInterval: Duration = .seconds(60)

    /// Removes clones left by dead agents, then finishes the jobs they (or an outage) left in the
    /// spool. Runs at start and every `maintenanceInterval`.
    public func maintain() async {
        let configuration = self.configuration
        let reaper = CloneReaper(workDirectory: configuration.workDirectory, logger: logger)
        let reaped = await reaper.reap()
        if !reaped.isEmpty { logger.warning("removed \(reaped.count) clone(s) left by an agent that died") }
        for source in self.sources {
            let delivered = await source.recoverInterruptedJobs(retention: configuration.job.spoolRetention)
            if delivered > 0 { logger.info("delivered \(delivered) job(s) left in the spool to \(source.name)") }
        }
    }

    /// Runs until `stopAcceptingJobs()` was called and every job has ended.
    public func run() async {
        logger.info(
            "mayfly \(MayflyVersion.current) taking jobs from \(sources.map(\.name).joined(separator: ", ")) (concurrency \(configuration.concurrency))"
        )
        await maintain()
        state.withLock { $0.started = true }
        await warmPool?.start()
        let maintenance = Task {
            while !Task.isCancelled {
                do { try await Task.sleep(for: Self.maintenanceInterval) } catch { return }
                await self.maintain()
            }
        }
        defer { maintenance.cancel() }
        let trimming = Task {
            while !Task.isCancelled {
                do { try await Task.sleep(for: IdleTrim.interval) } catch { return }
                await self.trimIfIdle()
            }
        }
        defer { trimming.cancel() }
        let pollers = sources.map { source in Task { await self.poll(source) } }
        let keep = state.withLock { state -> Bool in
            state.pollers = pollers
            return state.accepting
        }
        if !keep { for poller in pollers { poller.cancel() } }
        // Pollers are replaced on reload: wait for the current ones until no new ones are made.
        while true {
            let current = state.withLock { $0.pollers }
            for poller in current { await poller.value }
            let (after, accepting) = state.withLock { ($0.pollers, $0.accepting) }
            if !accepting { break }
            if after == current { try? await Task.sleep(for: .milliseconds(100)) }  // no server configured
        }
        // Wait for running jobs (stopAcceptingJobs and cancelRunningJobs decide how long).
        while true {
            let jobs = state.withLock { Array($0.jobs.values) }
            if jobs.isEmpty { break }
            for job in jobs { await job.task.value }
        }
        let pool = state.withLock { state -> WarmPool? in
            let pool = state.pool
            state.pool = nil
            return pool
        }
        await pool?.stop()
        logger.info("stopped: no job running, no job requested")
    }

    /// Stops asking for jobs (abandoning open requests); running jobs go on.
    public func stopAcceptingJobs() {
        let pollers = state.withLock { state -> [Task<Void, Never>] in
            state.accepting = false
            return state.pollers
        }
        if !pollers.isEmpty { logger.info("stopping: no more job requests; waiting for \(runningJobs) running job(s)") }
        for poller in pollers { poller.cancel() }
    }

    /// Stops the running jobs now: their VMs go, and they are reported failed.
    public func cancelRunningJobs() {
        stopAcceptingJobs()
        let jobs = state.withLock { Array($0.jobs.values) }
        for job in jobs { job.shutdown() }
    }

    /// Gives back resident code pages when no job runs (`IdleTrim`).
    private func trimIfIdle() async {
        guard state.withLock({ $0.jobs.isEmpty }) else { return }
        let logger = self.logger
        _ = await BlockingWork.run { IdleTrim.trim(logger: logger) }
    }

    private func poll(_ source: any JobSource) async {
        while !Task.isCancelled {
            do {
                try await slots.acquire()
            } catch {
                return
            }
            let outcome: JobRequestOutcome
            do {
                outcome = try await source.nextJob()
            } catch {
                slots.release()
                if Task.isCancelled { return }
                logger.warning("job request to \(source.name) failed: \(error)")
                try? await Task.sleep(for: .seconds(3))
                continue
            }
            switch outcome {
            case .job(let session):
                start(session, from: source)
            case .none(let wait):
                slots.release()
                if wait > .zero {
                    do { try await Task.sleep(for: wait) } catch { return }
                }
            }
        }
    }

    /// Runs one job in its own task (it outlives the poll loop that received it); the slot is
    /// released when the server has its result.
    private func start(_ session: any JobSession, from source: any JobSource) {
        let job = session.job
        var jobLogger = logger
        jobLogger[metadataKey: "job.id"] = "\(job.id)"
        jobLogger[metadataKey: "server"] = "\(source.name)"
        let configuration = self.configuration
        let log = JobLog(
            sink: session.log, maskedValues: job.maskedValues, limit: configuration.job.logLimit,
            maskTokenPrefixes: session.maskedTokenPrefixes)
        let control = JobControl()
        let reasons = ShutdownReason()
        let runner = JobRunner(configuration: configuration, logger: logger, warmPool: warmPool)
        let id = state.withLock { state -> Int in
            state.nextJob += 1
            return state.nextJob
        }
        let task = Task { [self, jobLogger] in
            await session.start()
            let work = Task { await runner.run(job, server: source.name, log: log, control: control) }
            let watcher = Task {
                for await request in session.cancellations {
                    switch request {
                    case .graceful: control.requestGracefulCancel()
                    case .abort:
                        reasons.abortedByServer()
                        work.cancel()
                    }
                }
            }
            reasons.onShutdown { work.cancel() }
            let report = await work.value
            watcher.cancel()
            if reasons.serverAborted {
                await session.abandon()
            } else {
                var outcome = report.outcome
                if outcome == .cancelled && reasons.shutDown { outcome = .systemFailure("the runner was shut down") }
                let clock = ContinuousClock()
                let uploadStart = clock.now
                await session.finish(outcome)
                AgentMetrics.phase("upload", clock.now - uploadStart)
            }
            jobLogger.info("job finished: \(report.outcome)")
            Self.record(report)
            let running = state.withLock { state -> Int in
                state.jobs[id] = nil
                return state.jobs.count
            }
            AgentMetrics.runningVMs(running)
            slots.release()
            if running == 0 { await trimIfIdle() }
        }
        let running = state.withLock { state -> Int in
            state.jobs[id] = RunningJob(task: task, log: log) {
                Task {
                    await log.line("ERROR: the runner is shutting down: the job is stopped")
                    reasons.shutDownNow()
                }
            }
            return state.jobs.count
        }
        AgentMetrics.runningVMs(running)
    }
}

extension RunnerDaemon {
    /// Counts a finished job and its phases in the metrics.
    static func record(_ report: JobReport) {
        let label: AgentMetrics.JobOutcomeLabel
        switch report.outcome {
        case .exited(0): label = .success
        case .exited: label = .failed
        case .timedOut: label = .timedOut
        case .cancelled: label = .cancelled
        case .systemFailure: label = .systemFailure
        }
        AgentMetrics.jobFinished(label)
        for (phase, duration) in report.timings { AgentMetrics.phase(phase.rawValue, duration) }
        AgentMetrics.lockRetries(max(0, report.lockAttempts - 1))
    }
}

/// Why a job was stopped: by the server (send nothing more) or by the agent shutting down
/// (report it failed).
final class ShutdownReason: Sendable {
    private struct State {
        var server = false
        var shutdown = false
        var handler: (@Sendable () -> Void)?
    }

    private let state = Mutex(State())

    var serverAborted: Bool { state.withLock { $0.server } }
    var shutDown: Bool { state.withLock { $0.shutdown } }

    func abortedByServer() { state.withLock { $0.server = true } }

    func onShutdown(_ handler: @escaping @Sendable () -> Void) {
        let now = state.withLock { state -> Bool in
            state.handler = handler
            return state.shutdown
        }
        if now { handler() }
    }

    func shutDownNow() {
        let handler = state.withLock { state -> (@Sendable () -> Void)? in
            state.shutdown = true
            return state.handler
        }
        handler?()
    }
}
