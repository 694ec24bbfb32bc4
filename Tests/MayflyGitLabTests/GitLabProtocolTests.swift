import Foundation
import Logging
import MayflyCore
import MayflyHTTP
import MayflyTestSupport
import Testing

@testable import MayflyAgent
@testable import MayflyGitLab

let quietLogger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

func source(_ server: FakeGitLab, spool: URL, token: String = FakeGitLab.runnerToken, poll: Duration = .milliseconds(200))
    -> GitLabJobSource
{
    let pki = try! TestPKI.shared()
    return GitLabJobSource(
        settings: .init(
            name: "fake", url: server.url, token: Secret(token), tls: TLSOptions(caFile: pki.caCertificate), proxy: nil,
            pollInterval: poll,
            spoolDirectory: spool.path, systemID: "r_testsystem01"),
        logger: quietLogger)
}

/// Takes the next job from `source`, failing the test if none comes.
func takeJob(_ source: GitLabJobSource) async throws -> GitLabJobSession {
    for _ in 0..<20 {
        if case .job(let session) = try await source.nextJob() { return try #require(session as? GitLabJobSession) }
    }
    throw FakeGitLab.Failure(description: "no job was handed out")
}

/// Writes `chunks` to a job session through a real JobLog (masking included), then finishes it.
func runFakeJob(_ session: GitLabJobSession, chunks: [String], outcome: JobOutcome, pause: Duration = .zero) async {
    let log = JobLog(
        sink: session.log, maskedValues: session.job.maskedValues, limit: .mebibytes(100),
        maskTokenPrefixes: session.maskedTokenPrefixes)
    await session.start()
    for chunk in chunks {
        await log.write(Array(chunk.utf8))
        if pause > .zero { try? await Task.sleep(for: pause) }
    }
    await log.finish()
    await session.finish(outcome)
}

@Suite("GitLab protocol against the fake server")
struct GitLabProtocolTests {
    @Test("verify a glrt- token, register with a legacy token (glrtr-), unregister both ways")
    func registration() async throws {
        let server = try await FakeGitLab(tls: true)
        let client = GitLabClient(
            url: server.url + "/", tls: TLSOptions(caFile: try TestPKI.shared().caCertificate), proxy: nil, logger: quietLogger)
        let verified = try await client.verify(token: Secret(FakeGitLab.runnerToken), systemID: "r_abc")
        #expect(verified.id > 0)
        await #expect(throws: GitLabError.self) { try await client.verify(token: Secret("glrt-wrong"), systemID: "r_abc") }
        let registered = try await client.register(
            registrationToken: Secret(FakeGitLab.registrationToken), description: "test", tags: ["a", "b"], runUntagged: true)
        #expect(registered.token.reveal().hasPrefix("glrtr-"))
        await #expect(throws: GitLabError.self) {
            try await client.register(registrationToken: Secret("wrong"), description: "", tags: [], runUntagged: false)
        }
        try await client.unregister(token: registered.token, systemID: "r_abc")
        try await client.unregister(token: Secret(FakeGitLab.runnerToken), systemID: "r_abc")
        let deletes = try await server.requests(method: "DELETE")
        #expect(deletes.map { $0["path"] as? String } == ["/api/v4/runners", "/api/v4/runners/managers"])
        // The runner token travels in the body and the RUNNER-TOKEN header; nothing else is sent.
        let verify = try #require(try await server.requests(pathPrefix: "/api/v4/runners/verify").first)
        let headers = try #require(verify["headers"] as? [String: String])
        #expect(headers.first { $0.key.lowercased() == "runner-token" }?.value == FakeGitLab.runnerToken)
        #expect(headers.first { $0.key.lowercased() == "user-agent" }?.value.hasPrefix("mayfly ") == true)
        #expect(headers.first { $0.key.lowercased() == "x-request-id" }?.value.count == 32)
        client.shutdown()
    }

    @Test("job requests: 204 with last_update bookkeeping, a held long poll, a job acknowledged at once")
    func jobRequests() async throws {
        let server = try await FakeGitLab()
        try await withTemporaryDirectory { spool in
            let jobs = source(server, spool: spool)
            guard case .none = try await jobs.nextJob() else {
                Issue.record("expected no job")
                return
            }
            guard case .none = try await jobs.nextJob() else {
                Issue.record("expected no job")
                return
            }
            let requests = try await server.requests(pathPrefix: "/api/v4/jobs/request")
            let second = try #require(requests.last?["body_json"] as? [String: Any])
            #expect(second["last_update"] is String, "the X-GitLab-Last-Update of the first answer is sent back")
            #expect(second["system_id"] as? String == "r_testsystem01")
            let info = try #require(second["info"] as? [String: Any])
            #expect((info["features"] as? [String: Bool])?["cancel_gracefully"] == true)

            // Workhorse-style long poll: the request is held, and abandoned at once when cancelled.
            try await server.scenario(["long_poll": 30])
            let clock = ContinuousClock()
            let held = Task { try await jobs.nextJob() }
            try await Task.sleep(for: .milliseconds(500))
            let cancelled = clock.now
            held.cancel()
            _ = await held.result
            #expect(clock.now - cancelled < .seconds(1), "a held job request is abandoned at once")

            try await server.scenario(["long_poll": 0])
            let (id, _) = try await server.enqueue([
                "script": ["echo hi"], "variables": [["key": "GIT_STRATEGY", "value": "none"]],
            ])
            let session = try await takeJob(jobs)
            #expect(session.jobID == id)
            #expect(session.job.script == ["echo hi"])
            let view = try await server.job(id)
            #expect(view["state"] as? String == "running", "acknowledged with PUT state=running")
            await session.abandon()
        }
    }

    @Test("a whole log with masking across chunks, checksum and size; the 202 final-update loop")
    func traceAndFinalUpdate() async throws {
        let server = try await FakeGitLab(tls: true)
        try await server.scenario(["trace_update_interval": 1, "final_update_202": 2])
        try await withTemporaryDirectory { spool in
            let (id, _) = try await server.enqueue([
                "script": ["true"],
                "variables": [
                    ["key": "GIT_STRATEGY", "value": "none"], ["key": "PASSWORD", "value": "pa55word-XYZ", "masked": true],
                ],
            ])
            let session = try await takeJob(source(server, spool: spool))
            await runFakeJob(
                session, chunks: ["line 1 pa55", "word-XYZ tail\n", "glpat-abcdef123 url ?private_token=zz&a=1\n"],
                outcome: .exited(0),
                pause: .milliseconds(700))
            let view = try await server.job(id)
            #expect(view["state"] as? String == "success")
            let trace = try #require(view["trace"] as? String)
            #expect(trace == "line 1 [MASKED] tail\nglpat-[MASKED] url ?private_token=[MASKED]&a=1\n")
            let final = try #require(view["final_update"] as? [String: Any])
            #expect(final["checksum_ok"] as? Bool == true)
            #expect(final["bytesize_ok"] as? Bool == true)
            let updates = try #require(view["updates"] as? [[String: Any]])
            #expect(updates.filter { ($0["status"] as? Int) == 202 }.count >= 2, "the final update was repeated on 202")
            #expect(
                !FileManager.default.fileExists(atPath: spool.appendingPathComponent("fake-\(id).log").path),
                "the trace buffer is removed")
        }
    }

    @Test("416 recovery, 5xx bursts with Retry-After, a dropped connection: the log still arrives whole, once")
    func faults() async throws {
        let server = try await FakeGitLab()
        try await server.scenario([
            "trace_update_interval": 1,
            "faults": [
                ["endpoint": "trace", "status": 503, "retry_after": 1, "count": 2],
                ["endpoint": "trace", "drop_connection": true],
                ["endpoint": "trace", "status": 416, "truncate_to": 0],
                ["endpoint": "update", "status": 502, "count": 1],
            ],
        ])
        try await withTemporaryDirectory { spool in
            let (id, _) = try await server.enqueue(["script": ["true"], "variables": [["key": "GIT_STRATEGY", "value": "none"]]])
            let session = try await takeJob(source(server, spool: spool))
            let lines = (1...40).map { "line \($0) of the log\n" }
            await runFakeJob(session, chunks: lines, outcome: .exited(3), pause: .milliseconds(60))
            let view = try await server.job(id)
            #expect(view["state"] as? String == "failed")
            #expect(view["failure_reason"] as? String == "script_failure")
            #expect(view["exit_code"] as? Int == 3)
            #expect(view["trace"] as? String == lines.joined(), "no gap, no duplicate")
            let final = try #require(view["final_update"] as? [String: Any])
            #expect(final["checksum_ok"] as? Bool == true)
            let patches = try await server.requests(pathPrefix: "/api/v4/jobs/\(id)/trace")
            #expect(patches.contains { ($0["status"] as? Int) == 416 }, "the 416 was met")
            #expect(patches.filter { ($0["status"] as? Int) == 503 }.count == 2, "the 503 burst was met and retried")
            #expect(patches.contains { $0["dropped"] as? Bool == true }, "the dropped connection was met")
            let puts = try await server.requests(pathPrefix: "/api/v4/jobs/\(id)", method: "PUT")
            #expect(puts.contains { ($0["status"] as? Int) == 502 }, "the 502 on the update was met and retried")
        }
    }

    @Test("a 409 on the job request waits the poll interval before asking again")
    func conflictOnRequest() async throws {
        let server = try await FakeGitLab()
        try await server.scenario(["faults": [["endpoint": "request", "status": 409, "count": 1]]])
        try await withTemporaryDirectory { spool in
            let jobs = source(server, spool: spool, poll: .seconds(2))
            let outcome = try await jobs.nextJob()
            guard case .none(let wait) = outcome else {
                Issue.record("a 409 handed out a job")
                return
            }
            #expect(wait == .seconds(2))
            let requests = try await server.requests(pathPrefix: "/api/v4/jobs/request")
            #expect(requests.contains { ($0["status"] as? Int) == 409 }, "the 409 was met")
        }
    }

    @Test("graceful cancel (canceling) is signalled; a hard cancel (canceled) aborts and nothing more is sent")
    func cancellation() async throws {
        let server = try await FakeGitLab()
        try await server.scenario(["trace_update_interval": 1])
        try await withTemporaryDirectory { spool in
            let jobs = source(server, spool: spool)
            let (graceful, _) = try await server.enqueue([
                "script": ["sleep 100"], "variables": [["key": "GIT_STRATEGY", "value": "none"]],
            ])
            let first = try await takeJob(jobs)
            await first.start()
            await first.log.write(Array("working\n".utf8))
            try await server.cancel(graceful, mode: "canceling")
            var iterator = first.cancellations.makeAsyncIterator()
            #expect(await iterator.next() == .graceful)
            await first.log.write(Array("after_script output\n".utf8))
            await first.finish(.cancelled)
            let view = try await server.job(graceful)
            #expect(view["state"] as? String == "canceled")
            #expect((view["trace"] as? String)?.contains("after_script output") == true)

            let (hard, _) = try await server.enqueue([
                "script": ["sleep 100"], "variables": [["key": "GIT_STRATEGY", "value": "none"]],
            ])
            let second = try await takeJob(jobs)
            await second.start()
            await second.log.write(Array("working\n".utf8))
            try await server.cancel(hard, mode: "canceled")
            var secondIterator = second.cancellations.makeAsyncIterator()
            #expect(await secondIterator.next() == .abort)
            let before = try await server.requests(pathPrefix: "/api/v4/jobs/\(hard)").count
            await second.abandon()
            try await Task.sleep(for: .seconds(2))
            #expect(
                try await server.requests(pathPrefix: "/api/v4/jobs/\(hard)").count == before,
                "nothing more is sent after an abort")
        }
    }

    @Test("a silent job is touched with PUT state=running (never an empty PATCH), and hears a cancel from it")
    func silentJobTouches() async throws {
        let server = try await FakeGitLab()
        try await server.scenario(["trace_update_interval": 1])
        try await withTemporaryDirectory { spool in
            let (id, _) = try await server.enqueue([
                "script": ["sleep 100"], "variables": [["key": "GIT_STRATEGY", "value": "none"]],
            ])
            let session = try await takeJob(source(server, spool: spool))
            await session.start()
            await session.log.write(Array("working\n".utf8))
            try await Task.sleep(for: .milliseconds(3500))
            try await server.cancel(id, mode: "canceled")
            var iterator = session.cancellations.makeAsyncIterator()
            #expect(await iterator.next() == .abort)
            await session.abandon()
            let patches = try await server.requests(pathPrefix: "/api/v4/jobs/\(id)/trace", method: "PATCH")
            #expect(!patches.isEmpty)
            #expect(patches.allSatisfy { ($0["body_length"] as? Int ?? 0) > 0 }, "no empty PATCH")
            let touches = try await server.requests(pathPrefix: "/api/v4/jobs/\(id)", method: "PUT").filter {
                let body = $0["body_json"] as? [String: Any]
                return body?["state"] as? String == "running" && (body?["output"] as? [String: Any])?["bytesize"] as? Int == 8
            }
            #expect(touches.count >= 2, "the silent job was touched with its log's size")
            #expect(touches.contains { ($0["status"] as? Int) == 403 }, "the cancel came back on a touch")
        }
    }

    @Test("a malformed payload fails that job with runner_system_failure and a message in its log")
    func malformed() async throws {
        let server = try await FakeGitLab()
        try await withTemporaryDirectory { spool in
            let (id, _) = try await server.enqueue(["script": ["true"], "malformed": true])
            let jobs = source(server, spool: spool)
            guard case .none = try await jobs.nextJob() else {
                Issue.record("a malformed job must not run")
                return
            }
            let view = try await server.job(id)
            #expect(view["state"] as? String == "failed")
            #expect(view["failure_reason"] as? String == "runner_system_failure")
            #expect((view["trace"] as? String)?.contains("ERROR: Job failed (system failure)") == true)
        }
    }

    @Test("three forbidden answers in a row make the source unhealthy and pause it for an hour")
    func unhealthy() async throws {
        let server = try await FakeGitLab()
        try await withTemporaryDirectory { spool in
            let jobs = source(server, spool: spool, token: "glrt-not-registered")
            var waits: [Duration] = []
            for _ in 0..<3 {
                if case .none(let wait) = try await jobs.nextJob() { waits.append(wait) }
            }
            #expect(waits == [.milliseconds(200), .milliseconds(200), .seconds(3600)])
            #expect(!jobs.isHealthy)
        }
    }

    @Test("mutual TLS: the client certificate is presented to a server that demands one")
    func mutualTLS() async throws {
        let server = try await FakeGitLab(tls: true, clientCertificates: true)
        let pki = try TestPKI.shared()
        let with = GitLabClient(
            url: server.url, tls: TLSOptions(caFile: pki.caCertificate, certFile: pki.clientCertificate, keyFile: pki.clientKey),
            proxy: nil, logger: quietLogger)
        _ = try await with.verify(token: Secret(FakeGitLab.runnerToken), systemID: "r_x")
        let without = GitLabClient(url: server.url, tls: TLSOptions(caFile: pki.caCertificate), proxy: nil, logger: quietLogger)
        await #expect(throws: GitLabError.self) {
            try await without.verify(token: Secret(FakeGitLab.runnerToken), systemID: "r_x")
        }
        with.shutdown()
        without.shutdown()
    }
}
