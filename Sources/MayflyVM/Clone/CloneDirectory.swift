import Foundation
import MayflyCore

/// One job's clone of a golden bundle: owns the layout of `<work_dir>/clones/<key>/` and of its
/// short runtime directory for sockets. Nothing else assembles these paths.
///
/// ```
/// <work_dir>/clones/<key>/   mode 0700
///   owner.json      who made it, for which job, which QEMU runs it (CloneRecord)
///   disk.qcow2      qcow2 overlay on the golden disk (or disk.raw / disk.qcow2 for reflink and copy)
///   nvram.fd        this clone's own copy of the UEFI variables (auxiliary storage)
///   serial.log      the guest's serial console
///   keys/           this clone's SSH client key, host key and known_hosts
///   seed.img        the cloud-init NoCloud seed (cloud-init bundles), and seed/ its sources
/// <runtime>/<key>/  qmp.sock, net/passt.sock  (Unix socket paths are limited to 108 bytes)
/// ```
public struct CloneDirectory: Sendable, Equatable {
    public let key: String
    public let path: String
    public let runtimePath: String
    /// The disk file name inside the clone, which depends on the strategy and golden format.
    public let diskName: String

    public var ownerPath: String { path + "/owner.json" }
    public var diskPath: String { path + "/" + diskName }
    public var nvramPath: String { path + "/nvram.fd" }
    public var serialLogPath: String { path + "/serial.log" }
    public var keysPath: String { path + "/keys" }
    public var clientKeyPath: String { keysPath + "/id_ed25519" }
    public var hostKeyPath: String { keysPath + "/host_ed25519" }
    public var knownHostsPath: String { keysPath + "/known_hosts" }
    public var seedPath: String { path + "/seed.img" }
    public var seedSourcesPath: String { path + "/seed" }
    public var qmpSocketPath: String { runtimePath + "/qmp.sock" }
    /// passt's socket directory (owned by the user passt runs as).
    public var networkDirectory: String { runtimePath + "/net" }

    public init(key: String, path: String, runtimePath: String, diskName: String) {
        self.key = key
        self.path = path
        self.runtimePath = runtimePath
        self.diskName = diskName
    }

    /// The record in `owner.json`, if it can be read.
    public func record() -> CloneRecord? { CloneRecord.read(from: ownerPath) }

    /// Where the clones of `workDirectory` live.
    public static func clonesPath(workDirectory: String) -> String { workDirectory + "/clones" }

    /// A clone key from the CI server's name and the job's id: stable (so a restarted agent finds
    /// the clone of the same job again), short, and safe as a file name.
    public static func key(server: String, job: String) -> String {
        let safeJob = String(job.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") ? $0 : "_" }.prefix(24))
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a, 64-bit: a name, not a security boundary
        for byte in Array(server.utf8) + [0] + Array(job.utf8) {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01b3
        }
        return "\(safeJob)-\(String(hash, radix: 16).leftPadded(to: 16, with: "0"))"
    }
}

/// Where Mayfly keeps sockets: short paths, private to the user. systemd's `$RUNTIME_DIRECTORY`
/// (the unit's `RuntimeDirectory=`), else `/run/mayfly` for root, `$XDG_RUNTIME_DIR/mayfly` for a
/// user session, `/tmp/mayfly-<uid>` otherwise.
public enum RuntimeDirectory {
    public static func base(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let systemd = environment["RUNTIME_DIRECTORY"]?.split(separator: ":").first, !systemd.isEmpty {
            return String(systemd)
        }
        if getuid() == 0, access("/run", W_OK) == 0 { return "/run/mayfly" }
        if let xdg = environment["XDG_RUNTIME_DIR"], !xdg.isEmpty, access(xdg, W_OK) == 0 { return xdg + "/mayfly" }
        return "/tmp/mayfly-\(getuid())"
    }
}
