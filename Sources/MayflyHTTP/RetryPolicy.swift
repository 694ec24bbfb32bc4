import Foundation
import MayflyCore

/// When and how long to wait before sending a request again, as gitlab-runner does it: statuses
/// 408, 429, 500, 502, 503, 504 and anything from 512 up are retried, as are transport failures;
/// the server's `RateLimit-ResetTime` (an HTTP date) or `Retry-After` (seconds or an HTTP date)
/// decide the wait when present, otherwise exponential backoff with jitter; at most
/// `maxAttempts` attempts in all.
public struct RetryPolicy: Sendable, Hashable {
    public var maxAttempts: Int
    public var backoff: Backoff
    /// The longest wait a server's header may ask for; longer requests are cut to this.
    public var maxServerDelay: Duration
    public var retriesTransportErrors: Bool

    public static let `default` = RetryPolicy()

    public init(
        maxAttempts: Int = 5, backoff: Backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(60)),
        maxServerDelay: Duration = .seconds(300), retriesTransportErrors: Bool = true
    ) {
        self.maxAttempts = max(1, maxAttempts)
        self.backoff = backoff
        self.maxServerDelay = maxServerDelay
        self.retriesTransportErrors = retriesTransportErrors
    }

    /// What to do after an attempt.
    public enum Decision: Equatable, Sendable {
        case retry(after: Duration)
        case stop
    }

    public static func isRetryable(status: Int) -> Bool {
        [408, 429, 500, 502, 503, 504].contains(status) || status >= 512
    }

    /// The decision after attempt number `attempt` (1 for the first) ended with `outcome`.
    public func decision(
        afterAttempt attempt: Int, outcome: Result<HTTPResponse, any Error>, now: Date = Date(),
        using generator: inout some RandomNumberGenerator
    ) -> Decision {
        guard attempt < maxAttempts else { return .stop }
        switch outcome {
        case .success(let response):
            guard Self.isRetryable(status: response.status) else { return .stop }
            if let requested = serverDelay(response.headers, now: now) {
                return .retry(after: min(requested, maxServerDelay))
            }
        case .failure(let error):
            guard retriesTransportErrors, let httpError = error as? HTTPError, case .transport = httpError else {
                return .stop
            }
        }
        return .retry(after: backoff.delay(forRetry: attempt, using: &generator))
    }

    /// The wait the server asked for, if it did: `RateLimit-ResetTime` first, then `Retry-After`.
    public func serverDelay(_ headers: HTTPHeaders, now: Date) -> Duration? {
        if let reset = headers["RateLimit-ResetTime"], let date = HTTPDate.parse(reset) {
            return .milliseconds(Int64(max(0, date.timeIntervalSince(now)) * 1000))
        }
        if let retryAfter = headers["Retry-After"] {
            if let seconds = Int(retryAfter.trimmingWhitespace()), seconds >= 0 { return .seconds(seconds) }
            if let date = HTTPDate.parse(retryAfter) {
                return .milliseconds(Int64(max(0, date.timeIntervalSince(now)) * 1000))
            }
        }
        return nil
    }
}

extension HTTPClient {
    /// Runs `request` until it succeeds or `policy` says stop, sleeping between attempts.
    /// Returns the last response (whatever its status) or throws the last transport error.
    /// `onRetry` hears about each retry before the wait, e.g. to log it.
    public func execute(
        _ request: HTTPRequest, retrying policy: RetryPolicy,
        onRetry: (_ attempt: Int, _ outcome: Result<HTTPResponse, any Error>, _ delay: Duration) -> Void = { _, _, _ in }
    ) async throws -> HTTPResponse {
        var generator = SystemRandomNumberGenerator()
        var attempt = 1
        while true {
            let outcome: Result<HTTPResponse, any Error>
            do {
                outcome = .success(try await execute(request))
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                outcome = .failure(error)
            }
            switch policy.decision(afterAttempt: attempt, outcome: outcome, using: &generator) {
            case .stop:
                return try outcome.get()
            case .retry(let delay):
                onRetry(attempt, outcome, delay)
                try await Task.sleep(for: delay)
                attempt += 1
            }
        }
    }
}

/// Reads the HTTP date formats of RFC 9110 (IMF-fixdate, e.g. `Tue, 05 Mar 2024 10:00:00 GMT`,
/// and the obsolete RFC 850 and asctime forms).
public enum HTTPDate {
    private static let formats = ["EEE, dd MMM yyyy HH:mm:ss zzz", "EEEE, dd-MMM-yy HH:mm:ss zzz", "EEE MMM d HH:mm:ss yyyy"]

    public static func parse(_ text: String) -> Date? {
        let trimmed = text.trimmingWhitespace()
        for format in formats {
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.timeZone = TimeZone(identifier: "GMT")
            formatter.dateFormat = format
            if let date = formatter.date(from: trimmed) { return date }
        }
        return nil
    }
}
