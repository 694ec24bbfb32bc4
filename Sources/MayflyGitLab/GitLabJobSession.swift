import Foundation
import Logging
import MayflyCore
import Metrics

/// One GitLab job while it runs: the trace buffer on disk, the loop that uploads new log bytes
/// every update interval (`PATCH /jobs/:id/trace`, at most 1 MiB per request, resuming from the
/// server's `Range` after a 416), the touch that learns of cancellation while a job is silent,
/// and the final update (rest of the log, then `PUT` with state, failure reason, exit code,
/// checksum and size, repeated while the server answers 202, retried with backoff on failures).
public final class GitLabJobSession: JobSession, @unchecked Sendable {
    public let job: Job
    /// The payload, for a job received in this process (a recovered one has only its record).
    public let payload: JobPayload?
    public let jobID: Int
    public let cancellations: AsyncStream<CancelRequest>
    public var log: any JobLogSink { sink }
    public let maskedTokenPrefixes: [String]

    let client: GitLabClient
    let token: Secret
    let buffer: TraceBuffer
    let logger: Logger
    let entry: SpoolEntry
    private var record: SpoolRecord
    private let serverName: String
    private let onEnd: @Sendable (Int) -> Void
    private let sink: TraceSink
    private let shipper: Shipper
    private let cancellationContinuation: AsyncStream<CancelRequest>.Continuation
    private let lock = NSLock()
    private var loop: Task<Void, Never>?

    /// Limits from gitlab-runner (R8): 1 MiB per PATCH, 3 s default interval, at most 15 min,
    /// 10 final-update attempts. A silent job is touched every `min(interval, 10 s)`
    /// (gitlab-runner: every 30 s), so that a cancel takes effect in seconds.
    static let patchLimit = 1 << 20
    static let defaultInterval: Duration = .seconds(3)
    static let idleProbeInterval: Duration = .seconds(10)
    static let finalUpdateAttempts = 10

    /// A job received now: its spool entry is created with the job's record.
    convenience init(
        client: GitLabClient, server: String, payload: JobPayload, job: Job, entry: SpoolEntry, logger: Logger,
        onEnd: @escaping @Sendable (Int) -> Void
    ) throws {
        try FileManager.default.createDirectory(
            atPath: entry.path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let owner = ProcessIdentity.current()
        let record = SpoolRecord(
            server: server, jobID: payload.id, jobToken: payload.token,
            supportedFailureReasons: payload.features?.failureReasons ?? [],
            sent: 0, outcome: nil, ownerPID: owner.pid, ownerStartTime: owner.startTime, ownerBootID: owner.bootID,
            createdAt: Date())
        record.write(entry.recordPath)
        try self.init(
            client: client, record: record, payload: payload, job: job, buffer: TraceBuffer(path: entry.tracePath), entry: entry,
            prefixes: SecretMasker.defaultTokenPrefixes + (payload.features?.tokenMaskPrefixes ?? []), logger: logger,
            onEnd: onEnd)
    }

    /// A job a dead agent (or a failed delivery) left in the spool.
    convenience init(
        recovering record: SpoolRecord, entry: SpoolEntry, client: GitLabClient, logger: Logger,
        onEnd: @escaping @Sendable (Int) -> Void
    )
        throws
    {
        var owned = record
        let owner = ProcessIdentity.current()
        (owned.ownerPID, owned.ownerStartTime, owned.ownerBootID) = (owner.pid, owner.startTime, owner.bootID)
        owned.write(entry.recordPath)
        try self.init(
            client: client, record: owned, payload: nil, job: Job(id: "\(record.jobID)", script: []),
            buffer: TraceBuffer(path: entry.tracePath, resume: true), entry: entry, prefixes: SecretMasker.defaultTokenPrefixes,
            logger: logger, onEnd: onEnd)
    }

    private init(
        client: GitLabClient, record: SpoolRecord, payload: JobPayload?, job: Job, buffer: TraceBuffer, entry: SpoolEntry,
        prefixes: [String],
        logger: Logger, onEnd: @escaping @Sendable (Int) -> Void
    ) throws {
        self.client = client
        self.payload = payload
        self.jobID = record.jobID
        self.job = job
        self.token = Secret(record.jobToken)
        self.buffer = buffer
        self.logger = logger
        self.entry = entry
        self.record = record
        self.serverName = record.server
        self.maskedTokenPrefixes = prefixes
        self.onEnd = onEnd
        self.sink = TraceSink(buffer: buffer)
        let (stream, continuation) = AsyncStream<CancelRequest>.makeStream()
        self.cancellations = stream
        self.cancellationContinuation = continuation
        self.shipper = Shipper(sent: record.sent)
    }

    /// Writes the record with the current acknowledged offset (and outcome, when known).
    /// The write (with its fsync) happens on `BlockingWork`'s threads. Calls come one at a
    /// time: from the upload loop, then from `finish` once the loop has stopped.
    private func persist(sent: Int? = nil, outcome: JobOutcome? = nil) async {
        let snapshot = lock.withLock { () -> SpoolRecord in
            if let sent { record.sent = sent }
            if let outcome { record.outcome = SpoolRecord.RecordedOutcome(outcome) }
            return record
        }
        let path = entry.recordPath
        await BlockingWork.run { snapshot.write(path) }
    }

    /// The job's log goes to the trace buffer; the loop uploads it.
    struct TraceSink: JobLogSink {
        let buffer: TraceBuffer
        func write(_ bytes: [UInt8]) async { await buffer.append(bytes) }
    }

    /// The upload state shared by the loop and the final update (one at a time).
    actor Shipper {
        var sent: Int
        init(sent: Int) { self.sent = sent }
        var interval = GitLabJobSession.defaultInterval
        var cancelSignalled = false
        var aborted = false

        func set(sent: Int) { self.sent = sent }
        func succeeded(sent: Int) { self.sent = sent }
        func set(interval: Duration?) { if let interval { self.interval = interval } }
        func markCancelSignalled() -> Bool {
            defer { cancelSignalled = true }
            return !cancelSignalled
        }
        func markAborted() { aborted = true }
        func resetInterval() { interval = GitLabJobSession.defaultInterval }
    }

    /// Starts the upload loop. It sends at most one request per update interval (GitLab's
    /// requested rate), but checks every 100 ms, so that output arriving after a quiet interval —
    /// the job's first lines among them — goes out at once instead of up to an interval later.
    public func start() async {
        let task = Task { [self] in
            let clock = ContinuousClock()
            var lastSend: ContinuousClock.Instant?
            while !Task.isCancelled {
                let aborted = await shipper.aborted
                if aborted { return }
                let interval = await shipper.interval
                let size = await buffer.size
                let pending = size > (await shipper.sent)
                // New bytes go out once per update interval. When there are none, the touch that
                // asks whether the job was cancelled goes out at least every 10 s, even when
                // GitLab's interval is 60 s: a cancel must take effect in seconds.
                let wait = pending ? interval : min(interval, Self.idleProbeInterval)
                let due = lastSend.map { clock.now - $0 >= wait } ?? true
                // The first request waits for the first bytes.
                if due && (pending || lastSend != nil) {
                    lastSend = clock.now
                    await shipIncrement()
                }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        lock.withLock { loop = task }
    }

    /// Sends what is new (PATCHes of at most 1 MiB). When there is nothing new it touches the job
    /// with `PUT state=running` and the log's checksum and size, as gitlab-runner does (an empty
    /// PATCH is never sent), so that a silent job still hears of cancellation from the answer's
    /// `Job-Status` or 403.
    private func shipIncrement() async {
        let sent = await shipper.sent
        let size = await buffer.size
        if size <= sent {
            let response = await client.updateJob(
                id: jobID, token: token, .init(state: "running", checksum: await buffer.checksum, bytesize: UInt64(size)))
            await react(to: response)
            return
        }
        // A backlog larger than one request goes out in several (1 MiB each), as gitlab-runner does.
        var offset = sent
        repeat {
            let bytes = await buffer.read(from: offset, limit: Self.patchLimit)
            let response = await client.patchTrace(id: jobID, token: token, offset: offset, bytes: bytes)
            await apply(response, sentFrom: offset, count: bytes.count)
            await react(to: response)
            guard case .succeeded = response.kind else { return }
            offset += bytes.count
        } while offset < (await buffer.size) && !Task.isCancelled
    }

    private func apply(_ response: GitLabClient.JobResponse, sentFrom offset: Int, count: Int) async {
        switch response.kind {
        case .succeeded:
            await shipper.succeeded(sent: offset + count)
            if count > 0 {
                await persist(sent: offset + count)
                Counter(label: "mayfly_log_bytes_sent_total", dimensions: [("server", serverName)]).increment(by: count)
            }
        case .rangeMismatch(let stored):
            logger.info("GitLab holds \(stored) bytes of the log, not \(offset): resending from there")
            await shipper.set(sent: stored)
        default: break
        }
    }

    /// Passes on cancellation requests and interval changes from any job response.
    private func react(to response: GitLabClient.JobResponse) async {
        await shipper.set(interval: response.updateInterval)
        if response.cancelRequested, await shipper.markCancelSignalled() {
            logger.info("GitLab asks to cancel the job (Job-Status: canceling): stopping the script, running after_script")
            cancellationContinuation.yield(.graceful)
        }
        let alreadyAborted = await shipper.aborted
        if case .abort = response.kind, !alreadyAborted {
            await shipper.markAborted()
            logger.warning("GitLab aborted the job (403 or Job-Status canceled/failed): stopping it, sending nothing more")
            cancellationContinuation.yield(.abort)
        }
    }

    private func stopLoop() async {
        let task = lock.withLock { loop }
        task?.cancel()
        await task?.value
    }

    public func abandon() async {
        await stopLoop()
        cancellationContinuation.finish()
        entry.remove()
        onEnd(jobID)
    }

    // MARK: Final update

    public func finish(_ outcome: JobOutcome) async {
        await stopLoop()
        defer {
            cancellationContinuation.finish()
            onEnd(jobID)
        }
        if await shipper.aborted {
            entry.remove()
            return
        }
        // Written down first: if the agent dies now, the next one delivers this result.
        await persist(sent: await shipper.sent, outcome: outcome)
        let update = Self.finalUpdate(for: outcome, supported: lock.withLock { record.supportedFailureReasons })
        await shipper.resetInterval()
        var backoff = Duration.seconds(1)
        for attempt in 1...Self.finalUpdateAttempts {
            switch await finalAttempt(update) {
            case .done:
                entry.remove()
                return
            case .failed(let reason):
                if attempt == Self.finalUpdateAttempts {
                    // The spool entry stays, with what GitLab has acknowledged: the agent's
                    // maintenance retries it until job.spool_retention.
                    await persist(sent: await shipper.sent)
                    logger.error(
                        "could not deliver the job's result after \(attempt) attempts: \(reason); it stays in \(entry.path) and is retried"
                    )
                    return
                }
                logger.warning("final update attempt \(attempt) failed: \(reason); retrying in \(DurationText.format(backoff))")
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(3600))
            }
        }
    }

    enum AttemptResult {
        case done
        case failed(String)
    }

    /// One final-update attempt: send all the remaining log, then the final PUT; repeat while
    /// the server answers 202 (it is still persisting the log).
    private func finalAttempt(_ base: GitLabClient.JobUpdate) async -> AttemptResult {
        while true {
            // (a) All remaining log.
            var stopSendingLog = false
            while !stopSendingLog {
                let sent = await shipper.sent
                let size = await buffer.size
                if sent >= size { break }
                let bytes = await buffer.read(from: sent, limit: Self.patchLimit)
                let response = await client.patchTrace(id: jobID, token: token, offset: sent, bytes: bytes)
                await shipper.set(interval: response.updateInterval)
                switch response.kind {
                case .succeeded:
                    await shipper.succeeded(sent: sent + bytes.count)
                    Counter(label: "mayfly_log_bytes_sent_total", dimensions: [("server", serverName)]).increment(
                        by: bytes.count)
                case .abort:
                    await shipper.markAborted()
                    return .done
                case .notFound: stopSendingLog = true
                case .rangeMismatch(let stored):
                    await shipper.set(sent: stored)
                    if stored > size { return .failed("GitLab claims \(stored) bytes of a \(size)-byte log") }
                    try? await Task.sleep(for: await shipper.interval)
                case .failed(let reason):
                    try? await Task.sleep(for: await shipper.interval)
                    return .failed("sending the log: \(reason)")
                default:
                    try? await Task.sleep(for: await shipper.interval)
                    return .failed("sending the log: unexpected answer")
                }
            }
            // (b) The final PUT.
            var update = base
            update.checksum = await buffer.checksum
            update.bytesize = UInt64(await buffer.size)
            let response = await client.updateJob(id: jobID, token: token, update)
            await shipper.set(interval: response.updateInterval)
            switch response.kind {
            case .succeeded, .abort: return .done
            case .accepted:
                try? await Task.sleep(for: await shipper.interval)
            case .traceValidationFailed:
                await shipper.set(sent: 0)
                try? await Task.sleep(for: await shipper.interval)
            case .failed(let reason):
                try? await Task.sleep(for: await shipper.interval)
                return .failed("the final update: \(reason)")
            case .rangeMismatch, .notFound:
                return .done
            }
        }
    }

    /// The final `PUT`'s state, failure reason and exit code for an outcome, with the reason
    /// mapped against what the server says it supports (gitlab-runner's mapper, R11).
    public static func finalUpdate(for outcome: JobOutcome, supported: [String]) -> GitLabClient.JobUpdate {
        switch outcome {
        case .exited(0): return .init(state: "success")
        case .exited(let status):
            return .init(state: "failed", failureReason: mapReason("script_failure", supported), exitCode: status)
        case .timedOut: return .init(state: "failed", failureReason: mapReason("job_execution_timeout", supported))
        case .systemFailure: return .init(state: "failed", failureReason: mapReason("runner_system_failure", supported))
        case .cancelled: return .init(state: "failed", failureReason: mapReason("job_canceled", supported))
        }
    }

    static func mapReason(_ reason: String, _ supported: [String]) -> String {
        let always = ["script_failure", "runner_system_failure", "job_execution_timeout"]
        if reason.isEmpty { return "script_failure" }
        if always.contains(reason) || supported.contains(reason) { return reason }
        let compatible = [
            "image_pull_failure": "runner_system_failure", "runner_configuration_error": "script_failure",
            "runner_external_dependency_failure": "runner_system_failure",
        ]
        if let mapped = compatible[reason] { return mapped }
        return "unknown_failure"
    }
}
