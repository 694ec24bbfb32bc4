/// Bounded exponential backoff with jitter: the wait before retry *n* is
/// `min(maximum, initial × multiplier^(n-1))`, shortened by a random fraction of up to `jitter`
/// so that many waiters do not retry in step. Used for HTTP retries and for the
/// auxiliary-storage lock.
public struct Backoff: Sendable, Hashable {
    public var initial: Duration
    public var maximum: Duration
    public var multiplier: Double
    /// 0 gives exact delays; 0.5 gives delays between half and all of the exponential value.
    public var jitter: Double

    public init(initial: Duration, maximum: Duration, multiplier: Double = 2, jitter: Double = 0.5) {
        self.initial = initial
        self.maximum = max(initial, maximum)
        self.multiplier = max(1, multiplier)
        self.jitter = min(1, max(0, jitter))
    }

    /// The exponential value before jitter for retry number `retry` (1 for the first retry).
    public func ceiling(forRetry retry: Int) -> Duration {
        let exponent = Double(max(0, retry - 1))
        var seconds = initial.secondsDouble
        let cap = maximum.secondsDouble
        for _ in 0..<Int(min(exponent, 64)) where seconds < cap { seconds *= multiplier }
        return .nanoseconds(Int64(min(seconds, cap) * 1e9))
    }

    /// The wait before retry number `retry`, jittered with `generator`.
    public func delay(forRetry retry: Int, using generator: inout some RandomNumberGenerator) -> Duration {
        let ceiling = ceiling(forRetry: retry)
        guard jitter > 0 else { return ceiling }
        let factor = 1 - jitter * Double.random(in: 0..<1, using: &generator)
        return .nanoseconds(Int64(ceiling.secondsDouble * factor * 1e9))
    }

    public func delay(forRetry retry: Int) -> Duration {
        var generator = SystemRandomNumberGenerator()
        return delay(forRetry: retry, using: &generator)
    }
}
