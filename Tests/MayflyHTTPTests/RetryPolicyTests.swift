import Foundation
import MayflyCore
import MayflyTestSupport
import Testing

@testable import MayflyHTTP

/// A generator that always yields the same value, so jitter is predictable in tests.
struct FixedGenerator: RandomNumberGenerator {
    var value: UInt64
    mutating func next() -> UInt64 { value }
}

@Suite("Retry policy")
struct RetryPolicyTests {
    @Test(
        "which statuses are retried",
        arguments: [
            (200, false), (201, false), (204, false), (400, false), (401, false), (403, false), (404, false), (409, false),
            (416, false), (422, false), (408, true), (429, true), (500, true), (501, false), (502, true), (503, true),
            (504, true), (505, false), (511, false), (512, true), (599, true),
        ])
    func retryableStatuses(status: Int, retried: Bool) {
        #expect(RetryPolicy.isRetryable(status: status) == retried)
        var generator = FixedGenerator(value: 0)
        let decision = RetryPolicy().decision(afterAttempt: 1, outcome: .success(HTTPResponse(status: status)), using: &generator)
        #expect((decision != .stop) == retried)
    }

    @Test("backoff grows exponentially, is capped, and jitter only shortens it")
    func backoffBounds() {
        let backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(60), multiplier: 2, jitter: 0.5)
        #expect(backoff.ceiling(forRetry: 1) == .milliseconds(100))
        #expect(backoff.ceiling(forRetry: 2) == .milliseconds(200))
        #expect(backoff.ceiling(forRetry: 5) == .milliseconds(1600))
        #expect(backoff.ceiling(forRetry: 30) == .seconds(60))
        #expect(backoff.ceiling(forRetry: 10_000) == .seconds(60))
        var low = FixedGenerator(value: .max)  // largest jitter
        var high = FixedGenerator(value: 0)  // no jitter
        for retry in 1...12 {
            let ceiling = backoff.ceiling(forRetry: retry)
            let shortest = backoff.delay(forRetry: retry, using: &low)
            let longest = backoff.delay(forRetry: retry, using: &high)
            #expect(longest == ceiling)
            #expect(shortest >= ceiling * 0.5 - .milliseconds(1))
            #expect(shortest < ceiling)
        }
        var system = SystemRandomNumberGenerator()
        let samples = (0..<200).map { _ in backoff.delay(forRetry: 3, using: &system) }
        #expect(Set(samples).count > 1, "jitter spreads the delays")
    }

    @Test("Retry-After in seconds or as a date, and RateLimit-ResetTime, decide the wait")
    func serverDelays() throws {
        let policy = RetryPolicy()
        let now = try #require(HTTPDate.parse("Tue, 05 Mar 2024 10:00:00 GMT"))
        var generator = FixedGenerator(value: 0)
        func decision(_ headers: HTTPHeaders) -> RetryPolicy.Decision {
            policy.decision(
                afterAttempt: 1, outcome: .success(HTTPResponse(status: 429, headers: headers)), now: now,
                using: &generator)
        }
        #expect(decision(["Retry-After": "7"]) == .retry(after: .seconds(7)))
        #expect(decision(["Retry-After": "Tue, 05 Mar 2024 10:00:30 GMT"]) == .retry(after: .seconds(30)))
        #expect(
            decision(["RateLimit-ResetTime": "Tue, 05 Mar 2024 10:01:00 GMT", "Retry-After": "7"]) == .retry(after: .seconds(60)))
        #expect(decision(["Retry-After": "100000"]) == .retry(after: .seconds(300)), "capped by maxServerDelay")
        #expect(decision(["Retry-After": "soon"]) == .retry(after: .milliseconds(100)), "unreadable: plain backoff")
        #expect(decision([:]) == .retry(after: .milliseconds(100)))
    }

    @Test("at most maxAttempts attempts; transport errors retry, cancellation and other errors do not")
    func attemptsAndErrors() {
        let policy = RetryPolicy(maxAttempts: 3)
        var generator = FixedGenerator(value: 0)
        let unavailable = Result<HTTPResponse, any Error>.success(HTTPResponse(status: 503))
        #expect(policy.decision(afterAttempt: 1, outcome: unavailable, using: &generator) != .stop)
        #expect(policy.decision(afterAttempt: 2, outcome: unavailable, using: &generator) != .stop)
        #expect(policy.decision(afterAttempt: 3, outcome: unavailable, using: &generator) == .stop)
        let transport = Result<HTTPResponse, any Error>.failure(
            HTTPError.transport(code: 7, message: "refused", method: "GET", url: "x"))
        #expect(policy.decision(afterAttempt: 1, outcome: transport, using: &generator) == .retry(after: .milliseconds(100)))
        #expect(policy.decision(afterAttempt: 2, outcome: transport, using: &generator) == .retry(after: .milliseconds(200)))
        let other = Result<HTTPResponse, any Error>.failure(HTTPError.responseTooLarge(limit: 1, url: "x"))
        #expect(policy.decision(afterAttempt: 1, outcome: other, using: &generator) == .stop)
        let noTransport = RetryPolicy(retriesTransportErrors: false)
        #expect(noTransport.decision(afterAttempt: 1, outcome: transport, using: &generator) == .stop)
    }

    @Test("the client retries a real flaky server until it answers, honouring Retry-After")
    func retriesAgainstServer() async throws {
        let server = try await TestHTTPServer(.plain)
        let client = HTTPClient(logger: testLogger)
        let policy = RetryPolicy(maxAttempts: 5, backoff: Backoff(initial: .milliseconds(20), maximum: .milliseconds(100)))
        var retries: [(Int, Duration)] = []
        let response = try await client.execute(
            HTTPRequest(url: server.baseURL + "/flaky?key=a&fail=2&header=Retry-After:1"), retrying: policy
        ) { attempt, _, delay in retries.append((attempt, delay)) }
        #expect(response.status == 200)
        #expect(response.text == "3")
        #expect(retries.map(\.0) == [1, 2])
        #expect(retries.allSatisfy { $0.1 == .seconds(1) })

        // Never recovers: the last response comes back after maxAttempts.
        let failing = try await client.execute(
            HTTPRequest(url: server.baseURL + "/flaky?key=b&fail=100&status=502"), retrying: policy)
        #expect(failing.status == 502)
        let count = try await client.execute(HTTPRequest(url: server.baseURL + "/flaky?key=b&fail=0"))
        #expect(count.text == "6", "the server saw exactly 5 attempts before this one")
        // Not retryable: one attempt only.
        let notFound = try await client.execute(
            HTTPRequest(url: server.baseURL + "/flaky?key=c&fail=100&status=404"), retrying: policy)
        #expect(notFound.status == 404)
        let seen = try await client.execute(HTTPRequest(url: server.baseURL + "/flaky?key=c&fail=1"))
        #expect(seen.text == "2")
    }
}

@Suite("URL redaction")
struct URLRedactionTests {
    @Test(
        "user-info and token parameters are hidden",
        arguments: [
            ("https://gitlab.example.com/api/v4/jobs", "https://gitlab.example.com/api/v4/jobs"),
            ("https://gitlab-ci-token:abc@gitlab.example.com/g/p.git", "https://[REDACTED]@gitlab.example.com/g/p.git"),
            ("https://h/x?private_token=abc&page=2", "https://h/x?private_token=[REDACTED]&page=2"),
            ("https://h/x?TOKEN=abc", "https://h/x?TOKEN=[REDACTED]"),
            ("https://h/a@b?x=1", "https://h/a@b?x=1"),
        ])
    func redaction(input: String, expected: String) {
        #expect(URLRedaction.redact(input) == expected)
    }
}
