import Foundation
import Logging
import MayflyCore
import MayflyGuest
import MayflyVM

/// VMs of the configured bundle prepared ahead of jobs (`warm_pool`): clones whose grace period
/// runs before any job needs them, or (`boot: true`) guests already booted and answering SSH.
/// Each is used once: a job takes it, or it is recycled (deleted and replaced) once older than
/// `max_age`. The pool refills in the background and is emptied on shutdown. Its clones are owned
/// by the agent like any clone, so the reaper removes them (and their QEMU) if the agent dies.
public actor WarmPool {
    /// What a job gets from the pool.
    public enum Ready: Sendable {
        case clone(Cloner.Made)
        case booted(RunningVM)

        var createdAt: Date {
            switch self {
            case .clone(let made): return made.record.createdAt
            case .booted(let running): return running.createdAt
            }
        }
    }

    private let launcher: VMLauncher
    private let bundle: BundleDirectory
    private var size: Int
    private var maxAge: Duration
    private var boot: Bool
    private let logger: Logger
    private var ready: [Ready] = []
    private var filling = false
    private var stopped = false
    private var refill: Task<Void, Never>?
    /// Bumped when the kind of entry changes (`boot`): a fill begun before is discarded.
    private var generation = 0

    public init(launcher: VMLauncher, bundle: BundleDirectory, size: Int, maxAge: Duration, boot: Bool, logger: Logger) {
        self.launcher = launcher
        self.bundle = bundle
        self.size = size
        self.maxAge = maxAge
        self.boot = boot
        self.logger = logger
    }

    /// Starts keeping the pool full (and recycling old entries) until `stop()`.
    public func start() {
        guard refill == nil, !stopped else { return }
        refill = Task { [weak self] in
            while !Task.isCancelled {
                await self?.maintain()
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    public func resize(size: Int, maxAge: Duration, boot: Bool) async {
        // A longer max_age would outlive the deadline written into the ready clones' records
        // (the reaper would take them): those are remade, as for a change of boot mode.
        let outlived = maxAge > self.maxAge
        self.maxAge = maxAge
        self.size = size
        if boot != self.boot || outlived {
            self.boot = boot
            generation += 1
            // Take the entries out before the first suspension: a fill that ends meanwhile
            // appends to the emptied list, and is not lost unstopped.
            let old = ready
            ready.removeAll()
            await discard(old)
        }
        while ready.count > size { await discard([ready.removeLast()]) }
    }

    /// A ready VM of `bundle` for a job, or `nil` (a miss).
    public func take(for bundle: BundleDirectory) async -> Ready? {
        await recycle()
        guard !stopped, bundle.path == self.bundle.path, !ready.isEmpty else {
            AgentMetrics.warmPool(hit: false)
            return nil
        }
        AgentMetrics.warmPool(hit: true)
        return ready.removeFirst()
    }

    /// Stops refilling and deletes every ready entry (stopping booted guests).
    public func stop() async {
        stopped = true
        refill?.cancel()
        await refill?.value
        let old = ready
        ready.removeAll()
        await discard(old)
    }

    private func discard(_ entries: [Ready]) async {
        for entry in entries {
            switch entry {
            case .clone(let made): launcher.cloner.remove(made.clone)
            case .booted(let running): await running.stop(graceful: false)
            }
        }
    }

    /// Drops entries past `max_age`, and booted guests whose QEMU died.
    private func recycle() async {
        let now = Date()
        var keep: [Ready] = []
        var drop: [Ready] = []
        for entry in ready {
            let old = now.timeIntervalSince(entry.createdAt) >= maxAge.secondsDouble
            var dead = false
            if case .booted(let running) = entry { dead = !running.isAlive }
            if old || dead { drop.append(entry) } else { keep.append(entry) }
        }
        ready = keep
        if !drop.isEmpty { logger.info("recycling \(drop.count) warm VM(s) older than \(DurationText.format(maxAge)) or dead") }
        await discard(drop)
    }

    private func maintain() async {
        await recycle()
        guard !stopped, !filling, ready.count < size else { return }
        filling = true
        defer { filling = false }
        let started = generation
        let job = "warm-\(UUID().uuidString.prefix(8).lowercased())"
        let lifetime = maxAge + .seconds(3600)
        do {
            let entry: Ready
            if boot {
                let running = try await launcher.start(bundle: bundle, server: "warm-pool", job: job, lifetime: lifetime)
                // Logged in once, so that a job on it skips the connect phase.
                // A persistent connection then lets the job's first session skip the handshake.
                do {
                    _ = try await GuestConnection.waitUntilReady(
                        running.machine.ssh,
                        timeout: max(.seconds(1), launcher.options.bootTimeout - running.machine.timings.boot),
                        cloudInit: running.machine.bundle.manifest.guest.provision == .cloudInit)
                    let master = try await SSHMaster.start(running.machine.ssh, controlPath: running.controlSocketPath)
                    running.attach(master, controlPath: running.controlSocketPath)
                } catch {
                    await running.stop(graceful: false)
                    throw error
                }
                entry = .booted(running)
            } else {
                entry = .clone(
                    try await launcher.cloner.makeClone(bundle: bundle, server: "warm-pool", job: job, lifetime: lifetime))
            }
            if stopped || ready.count >= size || generation != started {
                await discard([entry])
            } else {
                ready.append(entry)
                if case .booted = entry { logger.info("a booted warm VM is ready") } else { logger.info("a warm clone is ready") }
            }
        } catch {
            logger.warning("could not prepare a warm VM: \(error)")
        }
    }
}
