import Foundation
import Logging
import MayflyCore

/// Removes clones whose owner is gone: the agent process named in `owner.json` no longer runs
/// (pid gone, pid reused by another process, or the host rebooted). If the QEMU recorded there
/// is still that same QEMU (same start time, and its command line names the clone), it is killed
/// first, and so is its passt. Clones of a live owner are left alone, whatever their names, until
/// their deadline (the job's timeout plus boot and a margin; a warm clone's maximum age plus an
/// hour), plus an hour against clock steps: past that the clone is a leak, whoever owns it, and is removed the same way. Directories without a
/// readable record are removed only when they are older than `orphanAge` (a clone being created
/// writes its record first, so a young one may still be in the making).
public struct CloneReaper: Sendable {
    public let workDirectory: String
    public let runtimeBase: String
    public var orphanAge: Duration = .seconds(3600)
    /// How long past its deadline a clone of a live owner is left alone.
    static let liveOwnerSlack: TimeInterval = 3600
    let logger: Logger

    public init(workDirectory: String, runtimeBase: String = RuntimeDirectory.base(), logger: Logger) {
        self.workDirectory = workDirectory
        self.runtimeBase = runtimeBase
        self.logger = logger
    }

    /// One removed clone: where it was, whose it was, and whether a QEMU had to be killed.
    public struct Reaped: Sendable, Equatable {
        public let path: String
        public let job: String?
        public let killedQEMU: Int32?
    }

    public func reap() async -> [Reaped] {
        let clonesPath = CloneDirectory.clonesPath(workDirectory: workDirectory)
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: clonesPath) else { return [] }
        var reaped: [Reaped] = []
        for name in entries.sorted() {
            let path = clonesPath + "/" + name
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else { continue }
            guard let record = CloneRecord.read(from: path + "/owner.json") else {
                if age(of: path) > orphanAge {
                    remove(path, runtime: nil)
                    reaped.append(Reaped(path: path, job: nil, killedQEMU: nil))
                }
                continue
            }
            let ownerAlive = record.owner.isAlive
            // A live owner's clone gets an hour past its deadline more: a wall clock stepped
            // forward must not take the VMs of running jobs.
            if ownerAlive && Date() <= record.deadline.addingTimeInterval(Self.liveOwnerSlack) { continue }
            var killed: Int32?
            if let qemu = record.qemu, qemu.isAlive, let commandLine = ProcessIdentity.commandLine(of: qemu.pid),
                commandLine.contains(record.key)
            {
                await kill(qemu.pid)
                killed = qemu.pid
            }
            if let passt = record.network, passt.isAlive, let commandLine = ProcessIdentity.commandLine(of: passt.pid),
                commandLine.contains(record.key)
            {
                await kill(passt.pid)
            }
            remove(path, runtime: runtimeBase + "/" + record.key)
            let killedNote = killed.map { "; killed its QEMU (pid \($0))" } ?? ""
            let why =
                ownerAlive
                ? "removed an overdue clone (its deadline passed; agent pid \(record.owner.pid) still runs)"
                : "removed a clone left by a dead agent (pid \(record.owner.pid))"
            logger.warning(
                "\(why)\(killedNote)", metadata: ["vm.clone": "\(path)", "job.id": "\(record.job)"])
            reaped.append(Reaped(path: path, job: record.job, killedQEMU: killed))
        }
        return reaped
    }

    private func kill(_ pid: Int32) async {
        Foundation.kill(pid, SIGTERM)
        for _ in 0..<100 where ProcessIdentity.of(pid: pid) != nil && !ProcessIdentity.isZombie(pid) {
            _ = await BlockingWork.run { usleep(20_000) }
        }
        if ProcessIdentity.of(pid: pid) != nil && !ProcessIdentity.isZombie(pid) {
            Foundation.kill(pid, SIGKILL)
            for _ in 0..<100 where ProcessIdentity.of(pid: pid) != nil && !ProcessIdentity.isZombie(pid) {
                _ = await BlockingWork.run { usleep(20_000) }
            }
        }
    }

    private func remove(_ path: String, runtime: String?) {
        for target in [path, runtime].compactMap({ $0 }) where FileManager.default.fileExists(atPath: target) {
            do {
                try FileManager.default.removeItem(atPath: target)
            } catch {
                logger.error("could not remove \(target): \(error)")
            }
        }
    }

    private func age(of path: String) -> Duration {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
            let modified = attributes[.modificationDate] as? Date
        else { return .zero }
        return .seconds(max(0, Date().timeIntervalSince(modified)))
    }
}
