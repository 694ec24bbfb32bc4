import CMayflySystem
import Foundation

/// Which clone strategies work in a directory, found by trying them on small scratch files.
public struct CloneCapabilities: Sendable, Equatable {
    public var reflink: Bool
    public var reflinkReason: String
    public var overlay: Bool
    public var overlayReason: String

    /// The fastest strategy that works: reflink, then overlay, then a sparse copy.
    public var fastest: CloneStrategyChoice { reflink ? .reflink : overlay ? .overlay : .copy }

    /// Tries a `FICLONE` between two scratch files in `directory` and looks for `qemu-img`.
    public static func probe(directory: String) -> CloneCapabilities {
        let (reflink, reflinkReason) = probeReflink(directory: directory)
        let qemuImg = ExecutableLookup.find("qemu-img")
        return CloneCapabilities(
            reflink: reflink, reflinkReason: reflinkReason,
            overlay: qemuImg != nil,
            overlayReason: qemuImg.map { "qemu-img at \($0)" } ?? "qemu-img is not installed (apt-get install qemu-utils)")
    }

    static func probeReflink(directory: String) -> (Bool, String) {
        let source = directory + "/.mayfly-reflink-probe-\(getpid())-a"
        let destination = directory + "/.mayfly-reflink-probe-\(getpid())-b"
        defer {
            unlink(source)
            unlink(destination)
        }
        let sourceFD = open(source, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard sourceFD >= 0 else { return (false, "cannot create a file in \(directory): \(String(cString: strerror(errno)))") }
        defer { close(sourceFD) }
        let block = [UInt8](repeating: 0x6d, count: 4096)
        _ = block.withUnsafeBytes { write(sourceFD, $0.baseAddress, $0.count) }
        let destinationFD = open(destination, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard destinationFD >= 0 else {
            return (false, "cannot create a file in \(directory): \(String(cString: strerror(errno)))")
        }
        defer { close(destinationFD) }
        if mayfly_ficlone(destinationFD, sourceFD) == 0 { return (true, "FICLONE works on this filesystem") }
        let code = errno
        return (false, "FICLONE fails here: \(String(cString: strerror(code))) (errno \(code)); reflinks need btrfs or XFS")
    }
}

/// Finds executables on `PATH` (and the usual system directories, for daemons started with a
/// minimal environment).
public enum ExecutableLookup {
    public static func find(_ name: String, path: String? = ProcessInfo.processInfo.environment["PATH"]) -> String? {
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let directories =
            (path ?? "").split(separator: ":").map(String.init)
            + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        for directory in directories where !directory.isEmpty {
            let candidate = directory + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }
}
