import Foundation
import MayflyCore

/// `job.json` beside a job's trace in `<work_dir>/spool/<server>-<id>/`: what a restarted agent
/// needs to finish the job on GitLab after a crash or a long outage — the job's id and token
/// (the file is 0600), how much of the log GitLab has, the job's outcome once known, and the
/// agent that owns it. Rewritten atomically whenever it changes.
public struct SpoolRecord: Codable, Sendable, Equatable {
    public var server: String
    public var jobID: Int
    public var jobToken: String
    public var supportedFailureReasons: [String]
    /// Bytes of the trace GitLab has acknowledged.
    public var sent: Int
    /// Set when the job has ended; the final update is then all that is left.
    public var outcome: RecordedOutcome?
    public var ownerPID: Int32
    public var ownerStartTime: UInt64
    public var ownerBootID: String
    public var createdAt: Date

    /// `JobOutcome` in a form that can be written down.
    public struct RecordedOutcome: Codable, Sendable, Equatable {
        public var kind: String
        public var exitStatus: Int32?
        public var detail: String?

        public init(_ outcome: JobOutcome) {
            switch outcome {
            case .exited(let status): (kind, exitStatus, detail) = ("exited", status, nil)
            case .timedOut(let after): (kind, exitStatus, detail) = ("timed_out", nil, DurationText.format(after))
            case .cancelled: (kind, exitStatus, detail) = ("cancelled", nil, nil)
            case .systemFailure(let reason): (kind, exitStatus, detail) = ("system_failure", nil, reason)
            }
        }

        public var outcome: JobOutcome {
            switch kind {
            case "exited": return .exited(exitStatus ?? 1)
            case "timed_out": return .timedOut(after: (try? DurationText.parse(detail ?? "0")) ?? .zero)
            case "cancelled": return .cancelled
            default: return .systemFailure(detail ?? "unknown")
            }
        }
    }

    public static func read(_ path: String) -> SpoolRecord? {
        StateFile.read(SpoolRecord.self, from: path)
    }

    /// Best effort: a record that cannot be written leaves the previous one (the log is intact).
    public func write(_ path: String) {
        try? StateFile.write(self, to: path)
    }
}

/// The layout of one job's spool directory.
public struct SpoolEntry: Sendable {
    public let path: String
    public var tracePath: String { path + "/trace.log" }
    public var recordPath: String { path + "/job.json" }

    public init(directory: String, server: String, jobID: Int) {
        path = directory + "/" + CloneKeyName.forJob(server: server, id: jobID)
    }

    init(path: String) { self.path = path }

    public func remove() { try? FileManager.default.removeItem(atPath: path) }
}
