import Synchronization

/// A running job's graceful-cancel switch: once `requestGracefulCancel()` is called, the main
/// script is stopped and after_script still runs (GitLab's `canceling`). A hard stop is task
/// cancellation instead.
public final class JobControl: Sendable {
    private struct State {
        var requested = false
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
    }

    private let state = Mutex(State())

    public init() {}

    public var gracefulCancelRequested: Bool { state.withLock { $0.requested } }

    public func requestGracefulCancel() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.requested = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns when a graceful cancel is requested (at once if it already was), or when the
    /// calling task is cancelled; race it against the work in a task group.
    func waitForGracefulCancel() async {
        let id = state.withLock { state -> Int in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let now = state.withLock { state -> Bool in
                    if state.requested || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }
}
