import Foundation
import Logging
import MayflyCore
import MayflyVM

/// Clones of the configured bundle made ahead of jobs (`warm_pool`), so that a job skips the
/// clone and, usually, the grace period (it counts from the clone's creation). A warm clone is
/// used once: a job takes it, or it is recycled (deleted and replaced) once older than
/// `max_age`. The pool refills in the background and is emptied on shutdown. Warm clones are
/// owned by the agent like any clone, so the reaper removes them if the agent dies.
public actor WarmPool {
    private let cloner: Cloner
    private let bundle: BundleDirectory
    private var size: Int
    private var maxAge: Duration
    private let logger: Logger
    private var ready: [Cloner.Made] = []
    private var filling = false
    private var stopped = false
    private var refill: Task<Void, Never>?

    public init(cloner: Cloner, bundle: BundleDirectory, size: Int, maxAge: Duration, logger: Logger) {
        self.cloner = cloner
        self.bundle = bundle
        self.size = size
        self.maxAge = maxAge
        self.logger = logger
    }

    public var bundlePath: String { bundle.path }
    public var readyCount: Int { ready.count }

    /// Starts keeping the pool full (and recycling old clones) until `stop()`.
    public func start() {
        guard refill == nil else { return }
        refill = Task { [weak self] in
            while !Task.isCancelled {
                await self?.maintain()
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    public func resize(size: Int, maxAge: Duration) {
        self.size = size
        self.maxAge = maxAge
        while ready.count > size { cloner.remove(ready.removeLast().clone) }
    }

    /// A ready clone of `bundle` for a job, or `nil` (a miss) when none is ready.
    public func take(for bundle: BundleDirectory) -> Cloner.Made? {
        recycleOld()
        guard !stopped, bundle.path == self.bundle.path, !ready.isEmpty else {
            AgentMetrics.warmPool(hit: false)
            return nil
        }
        AgentMetrics.warmPool(hit: true)
        return ready.removeFirst()
    }

    /// Stops refilling and deletes every ready clone.
    public func stop() async {
        stopped = true
        refill?.cancel()
        await refill?.value
        for made in ready { cloner.remove(made.clone) }
        ready.removeAll()
    }

    private func recycleOld() {
        let now = Date()
        let (old, young) = ready.reduce(into: ([Cloner.Made](), [Cloner.Made]())) { parts, made in
            if now.timeIntervalSince(made.record.createdAt) >= maxAge.secondsDouble {
                parts.0.append(made)
            } else {
                parts.1.append(made)
            }
        }
        for made in old {
            logger.info(
                "recycling a warm clone older than \(DurationText.format(maxAge))", metadata: ["vm.clone": "\(made.clone.path)"])
            cloner.remove(made.clone)
        }
        ready = young
    }

    private func maintain() async {
        recycleOld()
        guard !stopped, !filling, ready.count < size else { return }
        filling = true
        defer { filling = false }
        do {
            let made = try await cloner.makeClone(
                bundle: bundle, server: "warm-pool", job: "warm-\(UUID().uuidString.prefix(8).lowercased())",
                lifetime: maxAge + .seconds(3600))
            if stopped || ready.count >= size {
                cloner.remove(made.clone)
            } else {
                ready.append(made)
            }
        } catch {
            logger.warning("could not make a warm clone: \(error)")
        }
    }
}
