import CMayflySystem
import Logging

/// Gives back the agent's resident code pages while no job runs. Start-up, configuration
/// parsing and a job's run touch megabytes of Swift runtime, Foundation and OpenSSL code that an
/// idle long poll never runs again; the kernel keeps them mapped (and counted in RSS) until
/// memory runs short. Trimming drops this process's mappings of those clean pages — the read-only
/// segments of the loaded program and libraries, never a page that was written or swapped — (they
/// stay in the page cache, nothing is read from disk again): what is resident afterwards is what
/// idling actually uses. Anonymous memory (heap, stacks, relocated data) is never touched.
/// `RunnerDaemon` trims every `interval` while no job runs, and when the last job ends; a
/// trim reads `/proc/self/smaps` (about a millisecond), so it runs off the cooperative pool.
enum IdleTrim {
    static let interval: Duration = .seconds(10)

    /// Drops the mappings; returns how many resident bytes they had, nil if /proc was unreadable.
    @discardableResult
    static func trim(logger: Logger) -> Int64? {
        let released = mayfly_trim_file_mappings()
        guard released >= 0 else { return nil }
        logger.debug("idle: released \(released / 1024) KiB of mapped code from the resident set")
        return released
    }
}
