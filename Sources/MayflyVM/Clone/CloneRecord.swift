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
    /// The passt process serving the guest's network, if any.
    public var network: ProcessIdentity?

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

    public static func read(from path: String) -> CloneRecord? {
        StateFile.read(CloneRecord.self, from: path)
    }

    public func write(to path: String) throws(VMError) {
        do {
            try StateFile.write(self, to: path)
        } catch {
            throw .io(operation: "write owner record", path: path, errno: error.errno)
        }
    }
}
