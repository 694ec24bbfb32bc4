import Foundation
import Logging
import MayflyCore

/// Why the auxiliary-storage lock could not be had: the file, who holds it, and how hard Mayfly
/// tried. The message is what an operator needs to act (kill the holder, or find the stuck VM).
public struct LockFailure: Sendable, Equatable, CustomStringConvertible {
    public let file: String
    public let holders: [LockHolder]
    public let attempts: Int
    public let waited: Duration
    /// The last concrete symptom: Mayfly's own probe, or QEMU's message.
    public let lastSymptom: String

    public var description: String {
        let who = holders.isEmpty ? "an unidentified process" : holders.map(\.description).joined(separator: ", ")
        return "auxiliary storage \(file) is locked by \(who); gave up after \(attempts) attempts over "
            + "\(DurationText.seconds(waited)) (EAGAIN: \(lastSymptom))"
    }
}

/// One look at the locks: either free (with the value the attempt produced) or busy.
public enum LockAttemptOutcome<Value: Sendable>: Sendable {
    case acquired(Value)
    case busy(file: String, symptom: String)
}

/// What taking the lock cost: attempts made and time spent waiting between them.
public struct LockStatistics: Sendable, Equatable {
    public var attempts: Int
    public var waited: Duration
}

/// Runs `attempt` until it reports the locks free or `policy` runs out, sleeping with bounded
/// exponential backoff and jitter between attempts and logging who holds what each time.
/// A busy lock is a classified, retriable condition, never a generic failure.
public func retryingLocks<Value: Sendable>(
    policy: LockRetryPolicy, logger: Logger,
    _ attempt: (_ number: Int) async throws -> LockAttemptOutcome<Value>
) async throws -> (Value, LockStatistics) {
    var generator = SystemRandomNumberGenerator()
    var waited = Duration.zero
    for number in 1...policy.attempts {
        switch try await attempt(number) {
        case .acquired(let value):
            if number > 1 {
                logger.info("auxiliary storage lock acquired after \(number) attempts (\(DurationText.seconds(waited)) waiting)")
            }
            return (value, LockStatistics(attempts: number, waited: waited))
        case .busy(let file, let symptom):
            // Scanning /proc blocks: off the cooperative pool.
            let holders = await BlockingWork.run { LockInspector.holders(of: file) }
            if number == policy.attempts {
                throw VMError.lockUnavailable(
                    LockFailure(file: file, holders: holders, attempts: number, waited: waited, lastSymptom: symptom))
            }
            let delay = policy.backoff.delay(forRetry: number, using: &generator)
            let who = holders.isEmpty ? "an unidentified process" : holders.map(\.description).joined(separator: ", ")
            logger.warning(
                "auxiliary storage \(file) is busy (\(symptom)), held by \(who); retry \(number)/\(policy.attempts - 1) in \(DurationText.format(delay))",
                metadata: ["vm.lock_file": "\(file)", "vm.lock_attempt": "\(number)"])
            try await Task.sleep(for: delay)
            waited += delay
        }
    }
    preconditionFailure("the loop returns or throws on its last attempt")
}

/// Recognises QEMU's own image-lock failures in its standard error, e.g.
/// `Failed to get "write" lock` / `Is another process using the image [PATH]?`, and
/// `Failed to lock byte 100`. Returns the image path (or what QEMU said when it names none).
public enum QEMULockError {
    public static func imagePath(in standardError: String) -> String? {
        let lockMessages = [
            "Failed to get \"write\" lock", "Failed to get shared \"write\" lock", "Failed to lock byte",
            "Failed to get \"consistent read\" lock",
        ]
        guard lockMessages.contains(where: standardError.contains) else { return nil }
        if let range = standardError.range(of: "Is another process using the image ["),
            let end = standardError[range.upperBound...].firstIndex(of: "]")
        {
            return String(standardError[range.upperBound..<end])
        }
        // "-drive file=PATH,if=…: Failed to lock byte 100": the image is the drive's file.
        for line in standardError.split(separator: "\n") where lockMessages.contains(where: line.contains) {
            if let file = line.range(of: "file=") {
                let rest = line[file.upperBound...]
                let end = rest.firstIndex(where: { $0 == "," || $0 == ":" }) ?? rest.endIndex
                return String(rest[..<end])
            }
        }
        return ""
    }
}
