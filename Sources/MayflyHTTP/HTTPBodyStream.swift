import Synchronization

/// A request body produced while the request runs (a live job log, a large upload). The producer
/// calls `write(_:)` and then `finish()`; libcurl's thread takes the bytes as it can send them.
/// It owns a bounded buffer: `write` waits while `capacity` bytes are still unsent, so memory
/// stays bounded whatever the producer does.
public final class HTTPBodyStream: Sendable {
    /// Thrown by `write` when the request ended (failed, cancelled, answered) before taking the bytes.
    public struct Closed: Error, CustomStringConvertible {
        public var description: String { "the HTTP request consuming this body stream has ended" }
    }

    /// What the reading side gets from `read(into:)`.
    enum ReadResult: Equatable {
        case bytes(Int)
        case pause
        case end
    }

    private struct State {
        var buffer: [UInt8] = []
        var readOffset = 0
        var finished = false
        var closed = false
        var readerPaused = false
        var writers: [CheckedContinuation<Void, Never>] = []
        var onData: (@Sendable () -> Void)?

        var buffered: Int { buffer.count - readOffset }
    }

    private let state = Mutex(State())
    public let capacity: Int

    public init(capacity: Int = 1 << 20) {
        self.capacity = max(1, capacity)
    }

    /// Appends `bytes`, waiting while the buffer is full. Throws `Closed` if the request has ended.
    public func write(_ bytes: [UInt8]) async throws {
        if bytes.isEmpty { return }
        while true {
            let outcome: (accepted: Bool, closed: Bool, wake: (@Sendable () -> Void)?) = state.withLock { state in
                if state.closed || state.finished { return (false, true, nil) }
                if state.buffered >= capacity { return (false, false, nil) }
                state.buffer.append(contentsOf: bytes)
                var wake: (@Sendable () -> Void)? = nil
                if state.readerPaused {
                    state.readerPaused = false
                    wake = state.onData
                }
                return (true, false, wake)
            }
            if outcome.closed { throw Closed() }
            if outcome.accepted {
                outcome.wake?()
                return
            }
            await withCheckedContinuation { continuation in
                let resumeNow = state.withLock { state -> Bool in
                    if state.closed || state.buffered < capacity { return true }
                    state.writers.append(continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        }
    }

    /// Ends the body: the request completes once the buffered bytes are sent.
    public func finish() {
        let wake = state.withLock { state -> (@Sendable () -> Void)? in
            state.finished = true
            guard state.readerPaused else { return nil }
            state.readerPaused = false
            return state.onData
        }
        wake?()
    }

    /// Called by the transfer: `onData` is how a paused reader is woken when bytes arrive.
    func attach(onData: @escaping @Sendable () -> Void) {
        state.withLock { $0.onData = onData }
    }

    /// Called on libcurl's thread: copies what is buffered into `destination`, or says to pause
    /// (nothing buffered yet) or that the body has ended.
    func read(into destination: UnsafeMutableRawBufferPointer) -> ReadResult {
        let (result, writers) = state.withLock { state -> (ReadResult, [CheckedContinuation<Void, Never>]) in
            let available = state.buffered
            if available == 0 {
                if state.finished || state.closed { return (.end, []) }
                state.readerPaused = true
                return (.pause, [])
            }
            let count = min(available, destination.count)
            state.buffer.withUnsafeBytes { source in
                destination.copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: source[state.readOffset..<state.readOffset + count]))
            }
            state.readOffset += count
            if state.readOffset == state.buffer.count {
                state.buffer.removeAll(keepingCapacity: true)
                state.readOffset = 0
            } else if state.readOffset > capacity {
                state.buffer.removeFirst(state.readOffset)
                state.readOffset = 0
            }
            var woken: [CheckedContinuation<Void, Never>] = []
            if state.buffered < capacity {
                woken = state.writers
                state.writers.removeAll()
            }
            return (.bytes(count), woken)
        }
        for writer in writers { writer.resume() }
        return result
    }

    /// Called when the request ends: pending and later writes fail with `Closed`.
    func close() {
        let writers = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.closed = true
            state.onData = nil
            defer { state.writers.removeAll() }
            return state.writers
        }
        for writer in writers { writer.resume() }
    }
}
