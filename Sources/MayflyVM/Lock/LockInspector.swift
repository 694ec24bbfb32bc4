import CMayflySystem
import Foundation
import MayflyCore

/// A process that holds a lock on a file (or has it open), as the kernel reports it.
public struct LockHolder: Sendable, Equatable, CustomStringConvertible {
    public let pid: Int32
    public let command: String
    /// What the kernel says it holds, e.g. `FLOCK WRITE` or `OFDLCK READ 100-101`; `open` when the
    /// process only has the file open.
    public let lock: String

    public var description: String { "pid \(pid) (\(command)) [\(lock)]" }
}

/// Finds who holds locks on a file. `/proc/locks` names the pid of flock and POSIX lock owners
/// but shows `-1` for OFD locks (QEMU's kind), so for those it looks through every process's
/// open files (`/proc/PID/fd`) for the same inode and reads the `lock:` lines of
/// `/proc/PID/fdinfo/FD`.
public enum LockInspector {
    struct LockLine: Equatable {
        let kind: String
        let access: String
        let pid: Int32
        let device: String
        let inode: UInt64
        let range: String
    }

    /// Parses one `/proc/locks` line, e.g. `1: FLOCK  ADVISORY  WRITE 1234 08:02:1311246 0 EOF`.
    /// Waiters (`->`) are skipped.
    static func parse(_ line: Substring) -> LockLine? {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 8, fields[1] != "->" else { return nil }
        let identity = fields[5].split(separator: ":")
        guard identity.count == 3, let pid = Int32(fields[4]), let inode = UInt64(identity[2]) else { return nil }
        return LockLine(
            kind: String(fields[1]), access: String(fields[3]), pid: pid,
            device: "\(identity[0].lowercased()):\(identity[1].lowercased())", inode: inode, range: "\(fields[6])-\(fields[7])")
    }

    static func deviceString(_ device: UInt64) -> String {
        // glibc's major/minor encoding, printed as /proc/locks does (%02x:%02x).
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~UInt64(0xfff))
        let minor = (device & 0xff) | ((device >> 12) & ~UInt64(0xff))
        return String(format: "%02x:%02x", major, minor)
    }

    /// The processes other than this one that hold locks on `path`, or failing that have it open.
    public static func holders(of path: String) -> [LockHolder] {
        var info = stat()
        guard stat(path, &info) == 0 else { return [] }
        let device = deviceString(UInt64(info.st_dev))
        let inode = UInt64(info.st_ino)
        let own = getpid()
        var holders: [LockHolder] = []
        var ofdLocked = false
        let table = (try? String(contentsOfFile: "/proc/locks", encoding: .utf8)) ?? ""
        for line in table.split(separator: "\n") {
            guard let lock = parse(line), lock.inode == inode, lock.device == device else { continue }
            if lock.pid > 0 {
                if lock.pid != own, !holders.contains(where: { $0.pid == lock.pid && $0.lock.hasPrefix(lock.kind) }) {
                    holders.append(LockHolder(pid: lock.pid, command: command(of: lock.pid), lock: "\(lock.kind) \(lock.access)"))
                }
            } else {
                ofdLocked = true
            }
        }
        if ofdLocked || holders.isEmpty {
            holders += openers(device: UInt64(info.st_dev), inode: UInt64(info.st_ino), excluding: own)
                .filter { opener in !holders.contains { $0.pid == opener.pid } }
        }
        return holders
    }

    /// Processes with the file open, each with the `lock:` lines of that descriptor if any.
    static func openers(device: UInt64, inode: UInt64, excluding own: Int32) -> [LockHolder] {
        var result: [LockHolder] = []
        let processes = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for name in processes {
            guard let pid = Int32(name), pid != own else { continue }
            let fdDirectory = "/proc/\(pid)/fd"
            guard let descriptors = try? FileManager.default.contentsOfDirectory(atPath: fdDirectory) else { continue }
            var locks: [String] = []
            var opened = false
            for descriptor in descriptors {
                var info = stat()
                guard stat(fdDirectory + "/" + descriptor, &info) == 0, UInt64(info.st_ino) == inode,
                    UInt64(info.st_dev) == device
                else {
                    continue
                }
                opened = true
                let fdinfo = (try? String(contentsOfFile: "/proc/\(pid)/fdinfo/\(descriptor)", encoding: .utf8)) ?? ""
                for line in fdinfo.split(separator: "\n") where line.hasPrefix("lock:") {
                    if let lock = parse(line.dropFirst(5).drop(while: { $0 == " " || $0 == "\t" })) {
                        locks.append("\(lock.kind) \(lock.access) \(lock.range)")
                    }
                }
            }
            if opened {
                result.append(
                    LockHolder(pid: pid, command: command(of: pid), lock: locks.isEmpty ? "open" : locks.joined(separator: ", ")))
            }
        }
        // Holders of locks first: a process that merely has the file open is a weaker suspect.
        return result.sorted { ($0.lock == "open" ? 1 : 0, $0.pid) < ($1.lock == "open" ? 1 : 0, $1.pid) }
    }

    static func command(of pid: Int32) -> String {
        guard let line = ProcessIdentity.commandLine(of: pid) else { return "?" }
        return line.count > 120 ? String(line.prefix(117)) + "..." : line
    }
}
