import Dispatch

/// Runs blocking system calls (socket connects and reads with timeouts, `flock`, file scans)
/// on Dispatch's threads instead of Swift's cooperative pool, which has only one thread per core
/// and must never block.
public enum BlockingWork {
    private static let queue = DispatchQueue(label: "mayfly.blocking", qos: .utility, attributes: .concurrent)

    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Result { try body() }) }
        }
    }

    public static func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            queue.async { continuation.resume(returning: body()) }
        }
    }
}
