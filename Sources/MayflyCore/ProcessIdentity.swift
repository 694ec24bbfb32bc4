import Foundation

/// Names one process across time: its pid, its start time (clock ticks since boot, from
/// `/proc/PID/stat`) and the host's boot id. A pid alone is reused by the kernel; the three
/// together are not, so a record can tell whether the process that wrote it still lives.
public struct ProcessIdentity: Codable, Sendable, Equatable {
    public var pid: Int32
    public var startTime: UInt64
    public var bootID: String

    public init(pid: Int32, startTime: UInt64, bootID: String) {
        self.pid = pid
        self.startTime = startTime
        self.bootID = bootID
    }

    /// This process.
    public static func current() -> ProcessIdentity {
        let pid = getpid()
        return ProcessIdentity(pid: pid, startTime: startTime(of: pid) ?? 0, bootID: currentBootID())
    }

    /// The process `pid` as it is now, or `nil` if there is none.
    public static func of(pid: Int32) -> ProcessIdentity? {
        guard let start = startTime(of: pid) else { return nil }
        return ProcessIdentity(pid: pid, startTime: start, bootID: currentBootID())
    }

    /// Whether this exact process is still running (same boot, same pid, same start time).
    public var isAlive: Bool {
        guard bootID == Self.currentBootID(), let start = Self.startTime(of: pid) else { return false }
        return start == startTime && !Self.isZombie(pid)
    }

    public static func currentBootID() -> String {
        (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?.trimmingCharacters(
            in: .whitespacesAndNewlines) ?? ""
    }

    /// Field 22 of `/proc/PID/stat`. The command name (field 2) may hold spaces and parentheses,
    /// so fields are counted after its last ')'.
    public static func startTime(of pid: Int32) -> UInt64? {
        guard pid > 0, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After ')': field 3 (state) is index 0, so field 22 is index 19.
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    public static func isZombie(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")")
        else {
            return false
        }
        return stat[stat.index(after: close)...].split(separator: " ").first == "Z"
    }

    /// The command line of `pid`, arguments joined by spaces.
    public static func commandLine(of pid: Int32) -> String? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty else { return nil }
        return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }.joined(separator: " ")
    }
}
