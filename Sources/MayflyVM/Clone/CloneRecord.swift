import Foundation
import MayflyCore

/// `owner.json` in a clone directory: who made the clone, for which job, when, how, and which
/// QEMU runs it. The reaper decides from it alone whether a clone is orphaned, so it is written
/// atomically (temporary file, then rename) whenever it changes.
public struct CloneRecord: Codable, Sendable, Equatable {
    public static let currentVersion = 1

    public var version: Int
    public var key: String
    /// The job, as the CI server names it (server and id).
    public var server: String
    public var job: String
    public var owner: ProcessIdentity
    public var createdAt: Date
    /// After this, the clone is overdue whatever its owner says.
    public var deadline: Date
    public var strategy: String
    public var bundle: String
    public var qemu: ProcessIdentity?

    public init(
        key: String, server: String, job: String, owner: ProcessIdentity, createdAt: Date, deadline: Date, strategy: String,
        bundle: String, qemu: ProcessIdentity? = nil
    ) {
        version = Self.currentVersion
        self.key = key
        self.server = server
        self.job = job
        self.owner = owner
        self.createdAt = createdAt
        self.deadline = deadline
        self.strategy = strategy
        self.bundle = bundle
        self.qemu = qemu
    }

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }()

    static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }()

    public static func read(from path: String) -> CloneRecord? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? decoder.decode(CloneRecord.self, from: data)
    }

    public func write(to path: String) throws(VMError) {
        let data: Data
        do { data = try Self.encoder.encode(self) } catch {
            throw .io(operation: "encode owner record for", path: path, errno: EINVAL)
        }
        try AtomicFile.write(data, to: path, mode: 0o600)
    }
}

/// Writes a file so that readers see either the old content or the new, never a mix: a
/// temporary file in the same directory, fsync, then rename(2).
public enum AtomicFile {
    public static func write(_ data: Data, to path: String, mode: mode_t = 0o644) throws(VMError) {
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw .io(operation: "create", path: temporary, errno: errno) }
        var offset = 0
        let bytes = [UInt8](data)
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 {
                let code = errno
                close(fd)
                unlink(temporary)
                throw .io(operation: "write", path: temporary, errno: code)
            }
            offset += written
        }
        fsync(fd)
        close(fd)
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw .io(operation: "rename into place", path: path, errno: code)
        }
    }
}
