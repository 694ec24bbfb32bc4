/// One CI job as any job source (a CI server module, or a job file for `mayfly exec`) describes
/// it: what to run, with which variables, for how long, in which bundle. CI server modules fill
/// it from their payloads; the agent runs it without knowing where it came from.
public struct Job: Sendable {
    /// The job's id as its source names it (GitLab's numeric id, or a generated one for exec).
    public var id: String
    /// Commands run before the script and not shown in the log line by line (getting the sources).
    public var prologue: [String] = []
    /// The main script: shell lines run in order; the first failing line fails the job.
    public var script: [String]
    /// Lines run after the main script whatever its result; their result does not change the job's.
    public var afterScript: [String]
    public var variables: [JobVariable]
    /// The job's own timeout; the agent applies the smaller of this and `job.timeout`.
    public var timeout: Duration?
    public var afterScriptTimeout: Duration
    /// A bundle name or path; `nil` means the configuration's `vm.bundle`.
    public var bundle: String?
    /// Where the script starts inside the guest; `nil` means the bundle's `guest.workdir`.
    public var workingDirectory: String?
    /// What the job asks for that Mayfly does not do (artifacts, cache, services), said in its
    /// log as warnings so that nothing is skipped silently.
    public var notices: [String] = []

    public static let defaultAfterScriptTimeout: Duration = .seconds(300)

    public init(
        id: String, script: [String], afterScript: [String] = [], variables: [JobVariable] = [], timeout: Duration? = nil,
        afterScriptTimeout: Duration = defaultAfterScriptTimeout, bundle: String? = nil, workingDirectory: String? = nil
    ) {
        self.id = id
        self.script = script
        self.afterScript = afterScript
        self.variables = variables
        self.timeout = timeout
        self.afterScriptTimeout = afterScriptTimeout
        self.bundle = bundle
        self.workingDirectory = workingDirectory
    }

    /// The values that must never appear in logs, for the masker.
    public var maskedValues: [String] {
        variables.filter { $0.masked && !$0.value.isEmpty }.map(\.value)
    }
}

/// One variable of a job, exported into the script's environment.
public struct JobVariable: Sendable, Equatable {
    public var name: String
    public var value: String
    /// Its value is replaced by `[MASKED]` wherever it appears in the job's log.
    public var masked: Bool
    /// The value is written to a file and the variable holds the file's path (GitLab's `file` type).
    public var file: Bool

    public init(name: String, value: String, masked: Bool = false, file: Bool = false) {
        self.name = name
        self.value = value
        self.masked = masked
        self.file = file
    }

    /// Whether `name` can be a shell variable name.
    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, first == "_" || (first.isASCII && first.properties.isAlphabetic) else {
            return false
        }
        return name.unicodeScalars.allSatisfy {
            $0 == "_" || ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0)))
        }
    }
}

/// How a job ended, from the job's point of view.
public enum JobOutcome: Sendable, Equatable, CustomStringConvertible {
    /// The script ran to its end; status 0 is success.
    case exited(Int32)
    /// The job ran out of time.
    case timedOut(after: Duration)
    /// The job was cancelled (by the server, by Ctrl-C, by shutdown).
    case cancelled
    /// Mayfly could not run it (clone, lock, boot, SSH failed): not the script's fault.
    case systemFailure(String)

    public var succeeded: Bool { self == .exited(0) }

    public var description: String {
        switch self {
        case .exited(let status): return status == 0 ? "succeeded" : "failed with exit status \(status)"
        case .timedOut(let after): return "timed out after \(DurationText.format(after))"
        case .cancelled: return "was cancelled"
        case .systemFailure(let reason): return "could not run: \(reason)"
        }
    }
}
