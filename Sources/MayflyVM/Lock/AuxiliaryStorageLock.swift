import CMayflySystem
import Foundation

/// Mayfly's exclusive hold on a clone's auxiliary storage (its NVRAM, or its disk when the bundle
/// has no NVRAM) for the whole life of the VM: an exclusive `flock`. QEMU 7.2 does not lock a
/// pflash NVRAM exclusively, so without this two QEMUs could share one variables file. `flock`
/// and QEMU's OFD locks do not interact on Linux, so holding it never disturbs QEMU; a second
/// taker gets EWOULDBLOCK (EAGAIN, 11) and `/proc/locks` names this process as the holder.
/// Owns its descriptor; `release()` (or deinit) closes it.
public final class AuxiliaryStorageLock: @unchecked Sendable {
    public let path: String
    private let lock = NSLock()
    private var descriptor: Int32

    private init(path: String, descriptor: Int32) {
        self.path = path
        self.descriptor = descriptor
    }

    deinit { release() }

    /// Takes the lock without waiting; `nil` when another open file description holds it.
    public static func tryAcquire(_ path: String) throws(VMError) -> AuxiliaryStorageLock? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(operation: "open", path: path, errno: errno) }
        if flock(fd, LOCK_EX | LOCK_NB) == 0 { return AuxiliaryStorageLock(path: path, descriptor: fd) }
        let code = errno
        close(fd)
        if code == EWOULDBLOCK { return nil }
        throw .io(operation: "flock", path: path, errno: code)
    }

    public func release() {
        lock.lock()
        defer { lock.unlock() }
        if descriptor >= 0 {
            close(descriptor)
            descriptor = -1
        }
    }
}

/// Looks for locks that would make QEMU fail to open an image, without taking any: open file
/// description (OFD) lock tests through `F_OFD_GETLK`. Taking a POSIX or OFD lock on an image
/// QEMU must open would itself make QEMU fail (`Failed to lock byte 100`), so this only asks.
public enum ImageLockProbe {
    /// QEMU's lock bytes: 100+n means "holds permission n", 200+n "does not share permission n".
    /// n = 1 is write.
    static let writePermissionByte: off_t = 101

    /// Whether any process holds any lock on `path` (what a QEMU opening it read-write would
    /// conflict with). `nil` when the file cannot be opened.
    public static func anyLock(on path: String) -> Bool? {
        conflict(path, start: 0, length: 0)
    }

    /// Whether a process holds write permission on `path` (what a QEMU opening it as a
    /// read-only backing file conflicts with, e.g. `qemu-io` writing the golden disk).
    public static func writer(on path: String) -> Bool? {
        conflict(path, start: writePermissionByte, length: 1)
    }

    private static func conflict(_ path: String, start: off_t, length: off_t) -> Bool? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var type: Int16 = 0
        var conflictStart: off_t = 0
        var conflictLength: off_t = 0
        guard mayfly_ofd_getlk(fd, Int16(F_WRLCK), start, length, &type, &conflictStart, &conflictLength) == 0 else { return nil }
        return type != Int16(F_UNLCK)
    }
}
