import Foundation
import Logging
import MayflyCore
import MayflyHTTP
import Metrics
import Synchronization

/// Takes jobs from one GitLab server for the agent: asks `POST /jobs/request` (long polls are
/// fine), acknowledges a job at once (`PUT state=running`, dropping it if refused), fails a job
/// whose payload Mayfly cannot use with `runner_system_failure` and a message in its log, and
/// keeps gitlab-runner's health rule (after 3 forbidden answers in a row, ask again only every
/// hour).
public final class GitLabJobSource: JobSource, @unchecked Sendable {
    public struct Settings: Sendable {
        public var name: String
        public var url: String
        public var token: Secret
        public var tls: TLSOptions
        public var proxy: String?
        public var pollInterval: Duration
        /// Where trace buffers are kept while jobs run.
        public var spoolDirectory: String
        public var systemID: String

        public init(
            name: String, url: String, token: Secret, tls: TLSOptions, proxy: String?, pollInterval: Duration,
            spoolDirectory: String,
            systemID: String
        ) {
            self.name = name
            self.url = url
            self.token = token
            self.tls = tls
            self.proxy = proxy
            self.pollInterval = pollInterval
            self.spoolDirectory = spoolDirectory
            self.systemID = systemID
        }
    }

    public let settings: Settings
    public let client: GitLabClient
    let logger: Logger
    /// Jobs of this source that a session of this process is handling (recovery leaves them be).
    private let active = Mutex<Set<Int>>([])

    private func markActive(_ id: Int) { active.withLock { _ = $0.insert(id) } }
    private func markEnded(_ id: Int) { active.withLock { _ = $0.remove(id) } }

    /// Finishes jobs left in the spool: by an agent that died mid-job (the job is failed with a
    /// line in its log saying the runner restarted, after the rest of its log), or jobs whose
    /// result could not be delivered yet (an outage). Entries older than `retention` are dropped.
    /// Returns how many jobs were delivered.
    public func recoverInterruptedJobs(retention: Duration) async -> Int {
        let prefix = CloneKeyName.forJob(server: settings.name, id: 0).dropLast(1)  // "<server>-"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: settings.spoolDirectory)) ?? []
        var delivered = 0
        for name in names.sorted() where name.hasPrefix(prefix) && Int(name.dropFirst(prefix.count)) != nil {
            let entry = SpoolEntry(path: settings.spoolDirectory + "/" + name)
            guard let record = SpoolRecord.read(entry.recordPath) else { continue }
            if active.withLock({ $0.contains(record.jobID) }) { continue }
            let owner = ProcessIdentity(pid: record.ownerPID, startTime: record.ownerStartTime, bootID: record.ownerBootID)
            if owner.isAlive && owner != ProcessIdentity.current() { continue }  // another agent is on it
            var jobLogger = logger
            jobLogger[metadataKey: "job.id"] = "\(record.jobID)"
            if Date().timeIntervalSince(record.createdAt) > retention.secondsDouble {
                jobLogger.error(
                    "dropping the spooled job: it could not be delivered within the retention of \(DurationText.format(retention))"
                )
                entry.remove()
                continue
            }
            markActive(record.jobID)
            do {
                let session = try GitLabJobSession(recovering: record, entry: entry, client: client, logger: jobLogger) {
                    [weak self] id in
                    self?.markEnded(id)
                }
                var outcome = record.outcome?.outcome
                if outcome == nil {
                    jobLogger.warning("the agent running this job died (pid \(record.ownerPID)); failing the job with its log")
                    await session.buffer.appendLine(
                        "ERROR: the runner restarted while this job was running (agent pid \(record.ownerPID) is gone); the job is failed"
                    )
                    outcome = .systemFailure("the runner restarted")
                } else {
                    jobLogger.info(
                        "delivering the result of a job that ended before the runner restarted or while GitLab was unreachable")
                }
                await session.finish(outcome!)
                if !FileManager.default.fileExists(atPath: entry.path) { delivered += 1 }
            } catch {
                markEnded(record.jobID)
                jobLogger.error("cannot reopen the spooled job: \(error)")
            }
        }
        return delivered
    }

    private struct Health {
        var forbiddenInARow = 0
        var lastAnswer: ContinuousClock.Instant?
        var lastFailure: ContinuousClock.Instant?
    }
    private let health = Mutex(Health())

    static let unhealthyLimit = 3
    static let unhealthyInterval: Duration = .seconds(3600)

    public var name: String { settings.name }

    public init(settings: Settings, logger: Logger) {
        self.settings = settings
        var logger = logger
        logger[metadataKey: "server"] = "\(settings.name)"
        self.logger = logger
        client = GitLabClient(url: settings.url, tls: settings.tls, proxy: settings.proxy, logger: logger)
    }

    public var isHealthy: Bool {
        health.withLock { health in
            guard health.forbiddenInARow < Self.unhealthyLimit else { return false }
            guard let failure = health.lastFailure else { return true }
            return (health.lastAnswer ?? failure) > failure
        }
    }

    public func nextJob() async throws -> JobRequestOutcome {
        let result = try await client.requestJob(token: settings.token, systemID: settings.systemID)
        try Task.checkCancellation()
        switch result {
        case .job(let payload, _):
            recordAnswer(forbidden: false)
            return await accept(payload)
        case .malformed(let identity, let problem):
            recordAnswer(forbidden: false)
            logger.error("GitLab handed out a job Mayfly cannot read: \(problem)")
            if let identity { await failUnusable(id: identity.id, token: Secret(identity.token), problem: problem) }
            return .none(wait: .zero)
        case .noJob(let held):
            recordAnswer(forbidden: false)
            // After a long poll the server did the waiting: ask again at once (a little pause
            // guards against a server that answers at once forever).
            return .none(wait: held ? .milliseconds(100) : settings.pollInterval)
        case .forbidden:
            let count = recordAnswer(forbidden: true)
            if count >= Self.unhealthyLimit {
                logger.error(
                    "GitLab refused the runner token \(count) times in a row; asking again in \(DurationText.format(Self.unhealthyInterval))"
                )
                return .none(wait: Self.unhealthyInterval)
            }
            logger.warning("GitLab refused the runner token (403); is the runner still registered?")
            return .none(wait: settings.pollInterval)
        case .conflict:
            // gitlab-runner counts a 409 as a failed request and waits its check interval
            // before the next one; asking again at once would hammer a server that keeps
            // answering 409.
            recordAnswer(forbidden: false)
            logger.info("GitLab answered the job request with 409 Conflict; asking again after the poll interval")
            return .none(wait: settings.pollInterval)
        case .unavailable:
            recordFailure()
            logger.warning("GitLab is unavailable (503)")
            return .none(wait: settings.pollInterval)
        case .failed(let reason):
            recordFailure()
            logger.warning("asking GitLab for a job failed: \(reason)")
            return .none(wait: settings.pollInterval)
        }
    }

    @discardableResult
    private func recordAnswer(forbidden: Bool) -> Int {
        health.withLock { health in
            health.lastAnswer = .now
            health.forbiddenInARow = forbidden ? health.forbiddenInARow + 1 : 0
            return health.forbiddenInARow
        }
    }

    private func recordFailure() {
        health.withLock { $0.lastFailure = .now }
        Counter(label: "mayfly_poll_errors_total", dimensions: [("server", settings.name)]).increment()
    }

    /// Acknowledges the job and builds its session; a job Mayfly cannot map is failed instead.
    private func accept(_ payload: JobPayload) async -> JobRequestOutcome {
        var jobLogger = logger
        jobLogger[metadataKey: "job.id"] = "\(payload.id)"
        let token = Secret(payload.token)
        let acknowledgement = await client.updateJob(id: payload.id, token: token, .init(state: "running"))
        switch acknowledgement.kind {
        case .succeeded, .accepted: break
        case .abort:
            jobLogger.warning("GitLab refused the job's acknowledgement; dropping it without running")
            return .none(wait: .zero)
        default:
            jobLogger.warning("the job's acknowledgement failed; dropping it without running")
            return .none(wait: .zero)
        }
        if acknowledgement.cancelRequested {
            jobLogger.info("the job was cancelled before it started")
            await failUnusable(
                id: payload.id, token: token, problem: "the job was cancelled before it started", reason: "job_canceled",
                supported: payload.features?.failureReasons ?? [], acknowledged: true)
            return .none(wait: .zero)
        }
        let job: Job
        do {
            job = try JobPayloadMapping.job(from: payload)
        } catch {
            jobLogger.error("job cannot run: \(error)")
            await failUnusable(
                id: payload.id, token: token, problem: error.description, supported: payload.features?.failureReasons ?? [],
                acknowledged: true)
            return .none(wait: .zero)
        }
        do {
            try FileManager.default.createDirectory(atPath: settings.spoolDirectory, withIntermediateDirectories: true)
            let entry = SpoolEntry(directory: settings.spoolDirectory, server: settings.name, jobID: payload.id)
            markActive(payload.id)
            let session = try GitLabJobSession(
                client: client, server: settings.name, payload: payload, job: job, entry: entry, logger: jobLogger
            ) { [weak self] id in self?.markEnded(id) }
            jobLogger.info(
                "received job \(payload.id) (\(payload.jobInfo?.name ?? "unnamed") in \(payload.jobInfo?.projectFullPath ?? "?"))"
            )
            return .job(session)
        } catch {
            markEnded(payload.id)
            jobLogger.error("cannot create the job's trace buffer: \(error)")
            await failUnusable(
                id: payload.id, token: token, problem: "Mayfly could not create the job's log buffer: \(error)",
                supported: payload.features?.failureReasons ?? [], acknowledged: true)
            return .none(wait: .zero)
        }
    }

    /// Fails a job that cannot run, with a message in its log so that nothing is lost. It is
    /// acknowledged first: GitLab accepts no other state for a job still waiting for its runner.
    private func failUnusable(
        id: Int, token: Secret, problem: String, reason: String = "runner_system_failure", supported: [String] = [],
        acknowledged: Bool = false
    ) async {
        if !acknowledged { _ = await client.updateJob(id: id, token: token, .init(state: "running")) }
        var crc = CRC32()
        let message = Array("Running with mayfly \(MayflyVersion.current)\nERROR: Job failed (system failure): \(problem)\n".utf8)
        crc.update(message)
        let patch = await client.patchTrace(id: id, token: token, offset: 0, bytes: message)
        let sent = { if case .succeeded = patch.kind { return true } else { return false } }()
        let update = GitLabClient.JobUpdate(
            state: "failed", failureReason: GitLabJobSession.mapReason(reason, supported),
            checksum: sent ? crc.gitLabChecksum : nil,
            bytesize: sent ? UInt64(message.count) : nil)
        // GitLab answers 202 while it persists the log: repeat after the interval it gives.
        for _ in 0..<10 {
            let response = await client.updateJob(id: id, token: token, update)
            guard case .accepted = response.kind else { return }
            try? await Task.sleep(for: response.updateInterval ?? .seconds(1))
        }
    }
}

/// File names for per-job files (trace buffers): the server's name and the job id, safe.
enum CloneKeyName {
    static func forJob(server: String, id: Int) -> String {
        let safe = server.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "-") ? $0 : "_" }
        return String(safe.prefix(64)) + "-\(id)"
    }
}
