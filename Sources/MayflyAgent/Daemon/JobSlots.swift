import Synchronization

/// `concurrency` permits shared by all servers' poll loops: a loop asks for a job only while it
/// holds a free slot, and a running job keeps its slot until it is finished and reported.
final class JobSlots: Sendable {
    private struct State {
        var total: Int
        var available: Int
        var waiters: [Int: CheckedContinuation<Bool, Never>] = [:]
        var order: [Int] = []
        var next = 0
    }

    private let state: Mutex<State>

    init(_ count: Int) { state = Mutex(State(total: count, available: count)) }

    /// Changes the number of slots. Fewer slots than running jobs is fine: new jobs wait until
    /// enough running ones end.
    func resize(to count: Int) {
        let woken = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            state.available += count - state.total
            state.total = count
            var woken: [CheckedContinuation<Bool, Never>] = []
            while state.available > 0, !state.order.isEmpty {
                let id = state.order.removeFirst()
                if let waiter = state.waiters.removeValue(forKey: id) {
                    state.available -= 1
                    woken.append(waiter)
                }
            }
            return woken
        }
        for waiter in woken { waiter.resume(returning: true) }
    }

    /// Waits for a slot; throws `CancellationError` if the task is cancelled while waiting.
    func acquire() async throws {
        let id = state.withLock { state -> Int in
            state.next += 1
            return state.next
        }
        let granted = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let immediate = state.withLock { state -> Bool? in
                    if Task.isCancelled { return false }
                    if state.available > 0 {
                        state.available -= 1
                        return true
                    }
                    state.waiters[id] = continuation
                    state.order.append(id)
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
                state.order.removeAll { $0 == id }
                return state.waiters.removeValue(forKey: id)
            }
            waiter?.resume(returning: false)
        }
        if !granted { throw CancellationError() }
    }

    func release() {
        let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
            while state.available >= 0, !state.order.isEmpty {
                let id = state.order.removeFirst()
                if let waiter = state.waiters.removeValue(forKey: id) { return waiter }
            }
            state.available += 1
            return nil
        }
        waiter?.resume(returning: true)
    }
}
