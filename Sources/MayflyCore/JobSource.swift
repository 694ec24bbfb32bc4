/// Where a job's log finally goes: the terminal for `mayfly exec`, the spool and the CI server
/// for jobs from a server. Writes arrive in order, already masked and limited.
public protocol JobLogSink: Sendable {
    func write(_ bytes: [UInt8]) async
}

/// What a CI server asks of a running job, besides its log.
public enum CancelRequest: Sendable, Equatable {
    /// Stop the main script, still run after_script, report the end (GitLab's `canceling`).
    case graceful
    /// Stop now, stop the VM, report nothing more (GitLab's `canceled`, or a 403).
    case abort
}

/// One job taken from a CI server, and the way back to that server for it: the seam between the
/// agent (which runs jobs) and each CI server module (which speaks one wire protocol). A second
/// server type is one new module implementing `JobSource` and `JobSession`.
public protocol JobSession: Sendable {
    var job: Job { get }
    /// Where the job's masked log goes (the spool, then the server).
    var log: any JobLogSink { get }
    /// Token prefixes whose values are masked in this job's log (e.g. `glpat-`).
    var maskedTokenPrefixes: [String] { get }
    /// The server's cancellation requests, as they arrive.
    var cancellations: AsyncStream<CancelRequest> { get }
    /// Starts sending the log while the job runs.
    func start() async
    /// Sends the rest of the log and the job's result; returns when the server has them or the
    /// attempts are used up. Not called after an abort.
    func finish(_ outcome: JobOutcome) async
    /// Stops all traffic for this job (after an abort).
    func abandon() async
}

/// What asking a CI server for work produced.
public enum JobRequestOutcome: Sendable {
    case job(any JobSession)
    /// Nothing to do now; ask again after `wait`.
    case none(wait: Duration)
}

/// A CI server that hands out jobs.
public protocol JobSource: Sendable {
    /// The configured name of the server, for logs and clone keys.
    var name: String { get }
    /// Asks for the next job; may hold the request open (long polling). Cancelling the calling
    /// task abandons the request at once.
    func nextJob() async throws -> JobRequestOutcome
    /// Whether the server has been reachable recently (for `/health`).
    var isHealthy: Bool { get }
    /// Finishes jobs left unfinished on this server by a dead agent or an outage (from the spool);
    /// returns how many were delivered.
    func recoverInterruptedJobs(retention: Duration) async -> Int
}
