import Metrics

/// The metrics the agent records, through swift-metrics (exported by `MetricsServer` in
/// Prometheus's text format). Names follow Prometheus conventions; durations are histograms in
/// seconds.
public enum AgentMetrics {
    /// Jobs finished, by result (`success`, `failed`, `timed_out`, `cancelled`, `system_failure`).
    public static func jobFinished(_ outcome: JobOutcomeLabel) {
        Counter(label: "mayfly_jobs_total", dimensions: [("result", outcome.rawValue)]).increment()
    }

    /// Time spent in one phase of a job.
    public static func phase(_ name: String, _ duration: Duration) {
        Timer(label: "mayfly_phase_duration_seconds", dimensions: [("phase", name)]).recordNanoseconds(
            duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    /// Retries of the auxiliary-storage lock (attempts beyond the first).
    public static func lockRetries(_ count: Int) {
        if count > 0 { Counter(label: "mayfly_lock_retries_total").increment(by: count) }
    }

    public static func warmPool(hit: Bool) {
        Counter(label: "mayfly_warm_pool_total", dimensions: [("result", hit ? "hit" : "miss")]).increment()
    }

    /// VMs running now.
    public static func runningVMs(_ count: Int) {
        Gauge(label: "mayfly_running_vms").record(count)
    }

    public enum JobOutcomeLabel: String {
        case success, failed, cancelled
        case timedOut = "timed_out"
        case systemFailure = "system_failure"
    }
}
