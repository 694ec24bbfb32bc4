/// Limits how many tests boot guests at once across the whole test process: two TCG guests run
/// side by side at no cost on a 2-core machine, four take twice as long (and make timing checks
/// flaky). Suites run in parallel, so the limit has to be process-wide.
public actor GuestSlots {
    public static let shared = GuestSlots(limit: 2)

    private var available: Int
    private var waiters: [CheckedContinuation<Void, Never>] = []

    public init(limit: Int) { available = limit }

    public func acquire() async {
        if available > 0 {
            available -= 1
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    public func release() {
        if waiters.isEmpty {
            available += 1
        } else {
            waiters.removeFirst().resume()
        }
    }
}

/// Runs `body` while holding one of the process-wide guest slots.
public func withGuestSlot<T>(_ body: () async throws -> T) async throws -> T {
    await GuestSlots.shared.acquire()
    do {
        let result = try await body()
        await GuestSlots.shared.release()
        return result
    } catch {
        await GuestSlots.shared.release()
        throw error
    }
}
