import Foundation
import Logging
import MayflyCore
import MayflyTestSupport
import Testing

@testable import MayflyVM

@Suite("Reaper", .serialized)
struct ReaperTests {
    @Test(
        "clones of a killed owner are removed and their QEMU and passt killed; a live owner's clone and unrelated processes are left alone"
    )
    func reapsOrphans() async throws {
        try await withTemporaryDirectory { directory in
            let bundle = try BundleDirectory(path: try TestBundle.tinyPath())
            let (logger, log) = recordingLogger()
            let runtime = directory.appendingPathComponent("run").path
            let cloner = Cloner(workDirectory: directory.path, strategy: .overlay, runtimeBase: runtime, logger: logger)

            // A stand-in agent that made a clone and started a QEMU for it, then is killed.
            let agent = try TestChild("/bin/sleep", ["300"])
            let orphan = try await cloner.makeClone(bundle: bundle, server: "s", job: "orphan", lifetime: .seconds(600)).clone
            let qemu = try TestChild(
                "/usr/bin/qemu-system-x86_64",
                ["-S", "-nodefaults", "-display", "none", "-accel", "tcg", "-name", "mayfly-\(orphan.key)"])
            #expect(await eventually { ProcessIdentity.of(pid: qemu.pid) != nil })
            let passt = try await PasstProcess.start(directory: orphan.networkDirectory)
            var record = try #require(orphan.record())
            record.owner = try #require(ProcessIdentity.of(pid: agent.pid))
            record.qemu = try #require(ProcessIdentity.of(pid: qemu.pid))
            record.network = passt.identity
            try record.write(to: orphan.ownerPath)

            // A dead owner whose recorded "QEMU" pid now belongs to an unrelated process.
            let bystander = try TestChild("/bin/sleep", ["300"])
            let misrecorded = try await cloner.makeClone(bundle: bundle, server: "s", job: "misrecorded", lifetime: .seconds(600))
                .clone
            var second = try #require(misrecorded.record())
            second.owner = ProcessIdentity(pid: 999_999, startTime: 1, bootID: ProcessIdentity.currentBootID())
            second.qemu = try #require(ProcessIdentity.of(pid: bystander.pid))
            try second.write(to: misrecorded.ownerPath)

            // A clone of a live owner (this process).
            let live = try await cloner.makeClone(bundle: bundle, server: "s", job: "live", lifetime: .seconds(600)).clone

            agent.kill()
            let reaper = CloneReaper(workDirectory: directory.path, runtimeBase: runtime, logger: logger)
            let reaped = await reaper.reap()

            #expect(Set(reaped.map(\.path)) == [orphan.path, misrecorded.path])
            #expect(reaped.first { $0.path == orphan.path }?.killedQEMU == qemu.pid)
            #expect(reaped.first { $0.path == misrecorded.path }?.killedQEMU == nil)
            #expect(await eventually { !qemu.process.isRunning }, "the orphan's QEMU was killed")
            #expect(await eventually { passt.hasExited }, "the orphan's passt was killed")
            #expect(bystander.process.isRunning, "an unrelated process is never killed")
            #expect(!FileManager.default.fileExists(atPath: orphan.path))
            #expect(!FileManager.default.fileExists(atPath: orphan.runtimePath))
            #expect(!FileManager.default.fileExists(atPath: misrecorded.path))
            #expect(FileManager.default.fileExists(atPath: live.path), "a live owner's clone stays")
            #expect(log.allText.contains("left by a dead agent"))
            cloner.remove(live)
        }
    }

    @Test("a live owner's clone past its deadline is a leak: it is removed and its QEMU killed")
    func overdue() async throws {
        try await withTemporaryDirectory { directory in
            let bundle = try BundleDirectory(path: try TestBundle.tinyPath())
            let (logger, log) = recordingLogger()
            let runtime = directory.appendingPathComponent("run").path
            let cloner = Cloner(workDirectory: directory.path, strategy: .overlay, runtimeBase: runtime, logger: logger)
            let overdue = try await cloner.makeClone(bundle: bundle, server: "s", job: "overdue", lifetime: .seconds(600)).clone
            let qemu = try TestChild(
                "/usr/bin/qemu-system-x86_64",
                ["-S", "-nodefaults", "-display", "none", "-accel", "tcg", "-name", "mayfly-\(overdue.key)"])
            #expect(await eventually { ProcessIdentity.of(pid: qemu.pid) != nil })
            var record = try #require(overdue.record())
            record.deadline = Date().addingTimeInterval(-CloneReaper.liveOwnerSlack - 1)
            record.qemu = try #require(ProcessIdentity.of(pid: qemu.pid))
            try record.write(to: overdue.ownerPath)
            let current = try await cloner.makeClone(bundle: bundle, server: "s", job: "current", lifetime: .seconds(600)).clone
            // Just past its deadline, within the slack kept for clock steps: left alone.
            let recent = try await cloner.makeClone(bundle: bundle, server: "s", job: "recent", lifetime: .seconds(600)).clone
            var recentRecord = try #require(recent.record())
            recentRecord.deadline = Date().addingTimeInterval(-60)
            try recentRecord.write(to: recent.ownerPath)

            let reaped = await CloneReaper(workDirectory: directory.path, runtimeBase: runtime, logger: logger).reap()
            #expect(reaped.map(\.path) == [overdue.path])
            #expect(reaped.first?.killedQEMU == qemu.pid)
            #expect(await eventually { !qemu.process.isRunning }, "the overdue clone's QEMU was killed")
            #expect(!FileManager.default.fileExists(atPath: overdue.path))
            #expect(FileManager.default.fileExists(atPath: current.path), "a live owner's clone within its deadline stays")
            #expect(FileManager.default.fileExists(atPath: recent.path), "a minute past its deadline is within the slack")
            #expect(log.allText.contains("overdue"))
            cloner.remove(current)
            cloner.remove(recent)
        }
    }

    @Test("a directory without an owner record is removed only once it is old")
    func recordless() async throws {
        try await withTemporaryDirectory { directory in
            let (logger, _) = recordingLogger()
            let clones = directory.appendingPathComponent("clones")
            let young = clones.appendingPathComponent(".new-young")
            try FileManager.default.createDirectory(at: young, withIntermediateDirectories: true)
            var reaper = CloneReaper(workDirectory: directory.path, runtimeBase: directory.path + "/run", logger: logger)
            #expect(await reaper.reap().isEmpty)
            #expect(FileManager.default.fileExists(atPath: young.path))
            reaper.orphanAge = .zero
            try await Task.sleep(for: .milliseconds(20))
            #expect(await reaper.reap().count == 1)
            #expect(!FileManager.default.fileExists(atPath: young.path))
        }
    }
}
