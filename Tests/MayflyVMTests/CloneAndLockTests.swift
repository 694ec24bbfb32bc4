import Foundation
import Logging
import MayflyCore
import MayflyTestSupport
import Testing

@testable import MayflyVM

func recordingLogger() -> (Logger, RecordingLogHandler.Store) {
    let store = RecordingLogHandler.Store()
    return (Logger(label: "test") { _ in RecordingLogHandler(store: store) }, store)
}

/// A Python process that takes a lock on `path` and sleeps: `flock` (Mayfly's kind) or an OFD
/// write lock (QEMU's kind). It writes "locked" to stdout once the lock is held.
func lockHolder(_ path: String, kind: String, seconds: Double) async throws -> TestChild {
    let script = """
        import fcntl, os, struct, sys, time
        fd = os.open(sys.argv[1], os.O_RDWR)
        if sys.argv[2] == "flock":
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
        open(sys.argv[1] + ".held", "w").close()
        time.sleep(float(sys.argv[3]))
        """
    let marker = path + ".held"
    try? FileManager.default.removeItem(atPath: marker)
    let child = try TestChild("/usr/bin/env", ["python3", "-c", script, path, kind, "\(seconds)"])
    let held = await eventually(timeout: .seconds(10)) { FileManager.default.fileExists(atPath: marker) }
    try? FileManager.default.removeItem(atPath: marker)
    guard held else { throw TestBundle.Missing(description: "the lock holder did not take its lock") }
    return child
}

@Suite("Clones")
struct CloneTests {
    @Test("clone keys are stable, distinct per server and job, and file-name safe")
    func keys() {
        let key = CloneDirectory.key(server: "gitlab.example.com", job: "4242")
        #expect(key == CloneDirectory.key(server: "gitlab.example.com", job: "4242"))
        #expect(key != CloneDirectory.key(server: "gitlab.other.org", job: "4242"))
        #expect(key != CloneDirectory.key(server: "gitlab.example.com", job: "4243"))
        #expect(key.hasPrefix("4242-"))
        let odd = CloneDirectory.key(server: "s", job: "../../etc/passwd with spaces and more text than fits")
        #expect(!odd.contains("/") && !odd.contains(" ") && odd.count <= 41)
    }

    @Test("an overlay clone: its own 0700 directory, owner record, qcow2 backed by the absolute golden path, per-clone keys")
    func overlayClone() async throws {
        try await withTemporaryDirectory { directory in
            let bundle = try BundleDirectory(path: try TestBundle.tinyPath())
            let (logger, log) = recordingLogger()
            let cloner = Cloner(
                workDirectory: directory.path + "/work", strategy: .auto, runtimeBase: directory.path + "/run", logger: logger)
            let made = try await cloner.makeClone(bundle: bundle, server: "local", job: "1", lifetime: .seconds(600))
            #expect(made.strategy == .overlay || made.strategy == .reflink)
            let clone = made.clone
            let mode = try #require(try FileManager.default.attributesOfItem(atPath: clone.path)[.posixPermissions] as? Int)
            #expect(mode == 0o700)
            let record = try #require(clone.record())
            #expect(record.owner == .current())
            #expect(record.job == "1" && record.server == "local")
            #expect(record.strategy == made.strategy.rawValue)
            #expect(record.deadline.timeIntervalSince(record.createdAt) > 590)
            #expect(
                FileManager.default.fileExists(atPath: clone.clientKeyPath)
                    && FileManager.default.fileExists(atPath: clone.hostKeyPath))
            #expect(log.allText.contains("by \(made.strategy.rawValue)"), "the log says which strategy was used")
            if made.strategy == .overlay {
                let info = try await CommandRunner.run("qemu-img", ["info", "--output=json", clone.diskPath]).check()
                #expect(info.standardOutput.contains("\"backing-filename\": \"\(bundle.diskPath)\""))
            }
            // Nothing but the clone itself in clones/ (no temporary directory).
            #expect(try FileManager.default.contentsOfDirectory(atPath: cloner.clonesPath) == [clone.key])
            cloner.remove(clone)
            #expect(!FileManager.default.fileExists(atPath: clone.path))
            #expect(!FileManager.default.fileExists(atPath: clone.runtimePath))
        }
    }

    @Test("copy makes a full sparse copy; an explicit reflink that cannot work fails clearly instead of degrading")
    func copyAndReflink() async throws {
        try await withTemporaryDirectory { directory in
            let bundle = try BundleDirectory(path: try TestBundle.tinyPath())
            let (logger, _) = recordingLogger()
            let copier = Cloner(
                workDirectory: directory.path, strategy: .copy, runtimeBase: directory.path + "/run", logger: logger)
            let made = try await copier.makeClone(bundle: bundle, server: "local", job: "copy", lifetime: .seconds(60))
            #expect(made.strategy == .copy)
            let hashes = try await SHA256Sum.hash([made.clone.diskPath, bundle.diskPath])
            #expect(hashes[made.clone.diskPath] == hashes[bundle.diskPath])
            copier.remove(made.clone)

            let reflinkWorks = CloneCapabilities.probe(directory: directory.path).reflink
            let reflinker = Cloner(
                workDirectory: directory.path, strategy: .reflink, runtimeBase: directory.path + "/run", logger: logger)
            if reflinkWorks {
                let reflinked = try await reflinker.makeClone(bundle: bundle, server: "local", job: "r", lifetime: .seconds(60))
                #expect(reflinked.strategy == .reflink)
                reflinker.remove(reflinked.clone)
            } else {
                let error = await #expect(throws: VMError.self) {
                    try await reflinker.makeClone(bundle: bundle, server: "local", job: "r", lifetime: .seconds(60))
                }
                #expect(error?.description.contains("clone strategy 'reflink' does not work here") == true)
                let left = try FileManager.default.contentsOfDirectory(atPath: reflinker.clonesPath)
                #expect(left.isEmpty, "a failed clone leaves nothing: \(left)")
            }
        }
    }

    @Test("a clone of a running job is refused; one left by a dead agent is replaced")
    func sameJobTwice() async throws {
        try await withTemporaryDirectory { directory in
            let bundle = try BundleDirectory(path: try TestBundle.tinyPath())
            let (logger, _) = recordingLogger()
            let cloner = Cloner(
                workDirectory: directory.path, strategy: .overlay, runtimeBase: directory.path + "/run", logger: logger)
            let first = try await cloner.makeClone(bundle: bundle, server: "s", job: "7", lifetime: .seconds(60))
            await #expect(throws: VMError.self) {
                try await cloner.makeClone(bundle: bundle, server: "s", job: "7", lifetime: .seconds(60))
            }
            var record = try #require(first.clone.record())
            record.owner = ProcessIdentity(
                pid: record.owner.pid, startTime: record.owner.startTime + 1, bootID: record.owner.bootID)
            try record.write(to: first.clone.ownerPath)
            let second = try await cloner.makeClone(bundle: bundle, server: "s", job: "7", lifetime: .seconds(60))
            #expect(second.clone.record()?.owner == .current())
            cloner.remove(second.clone)
        }
    }

    @Test("the grace period counts from the clone's creation")
    func gracePeriod() {
        let created = Date(timeIntervalSince1970: 1000)
        #expect(GracePeriod.remaining(.seconds(5), createdAt: created, now: created) == .seconds(5))
        #expect(GracePeriod.remaining(.seconds(5), createdAt: created, now: created.addingTimeInterval(2)) == .seconds(3))
        #expect(GracePeriod.remaining(.seconds(5), createdAt: created, now: created.addingTimeInterval(60)) == .zero)
        #expect(GracePeriod.remaining(.zero, createdAt: created, now: created) == .zero)
    }
}

@Suite("The auxiliary-storage lock", .serialized)
struct LockTests {
    @Test("a second taker of the flock is refused, and /proc/locks names the holder's pid")
    func flockHolder() async throws {
        try await withTemporaryDirectory { directory in
            let file = directory.appendingPathComponent("nvram.fd").path
            FileManager.default.createFile(atPath: file, contents: Data(count: 4096))
            let holder = try await lockHolder(file, kind: "flock", seconds: 30)
            #expect(try AuxiliaryStorageLock.tryAcquire(file) == nil)
            let holders = LockInspector.holders(of: file)
            #expect(holders.contains { $0.pid == holder.pid && $0.lock.contains("FLOCK") }, "\(holders)")
            #expect(holders.first?.command.contains("python3") == true)
            holder.kill()
            let lock = try #require(try AuxiliaryStorageLock.tryAcquire(file))
            // Our own flock does not make a QEMU-style probe see a lock: the two kinds do not interact.
            #expect(ImageLockProbe.anyLock(on: file) == false)
            lock.release()
        }
    }

    @Test("an OFD lock (QEMU's kind) is seen by the probe, and its holder found through /proc/PID/fdinfo")
    func ofdHolder() async throws {
        try await withTemporaryDirectory { directory in
            let file = directory.appendingPathComponent("disk.qcow2").path
            FileManager.default.createFile(atPath: file, contents: Data(count: 4096))
            #expect(ImageLockProbe.anyLock(on: file) == false)
            let holder = try await lockHolder(file, kind: "ofd", seconds: 30)
            #expect(ImageLockProbe.anyLock(on: file) == true)
            let holders = LockInspector.holders(of: file)
            #expect(holders.contains { $0.pid == holder.pid && $0.lock.contains("OFDLCK") }, "\(holders)")
            holder.kill()
            #expect(await eventually { ImageLockProbe.anyLock(on: file) == false })
        }
    }

    @Test("qemu-io writing the golden image is seen as a writer, and QEMU's own refusal is classified with the image path")
    func qemuIOHolder() async throws {
        try await withTemporaryDirectory { directory in
            let image = directory.appendingPathComponent("golden.qcow2").path
            _ = try await CommandRunner.run("qemu-img", ["create", "-q", "-f", "qcow2", image, "64M"]).check()
            #expect(ImageLockProbe.writer(on: image) == false)
            let holder = try TestChild("/usr/bin/qemu-io", ["-c", "sleep 30000", image])
            #expect(await eventually { ImageLockProbe.writer(on: image) == true })
            #expect(LockInspector.holders(of: image).contains { $0.pid == holder.pid })
            // A real QEMU refusing an overlay on the held golden image.
            let overlay = directory.appendingPathComponent("clone.qcow2").path
            _ = try await CommandRunner.run(
                "qemu-img", ["create", "-q", "-f", "qcow2", "-b", image, "-F", "qcow2", "-u", overlay, "64M"]
            ).check()
            let refused = try await CommandRunner.run(
                "qemu-system-x86_64",
                [
                    "-nodefaults", "-display", "none", "-accel", "tcg", "-S", "-drive",
                    "file=\(overlay),if=none,id=d0,format=qcow2",
                    "-device", "virtio-blk-pci,drive=d0",
                ], timeout: .seconds(30))
            #expect(!refused.succeeded)
            #expect(refused.standardError.contains("Failed to get shared \"write\" lock"), "\(refused.standardError)")
            #expect(QEMULockError.imagePath(in: refused.standardError) == image)
            holder.kill()
        }
    }

    @Test("QEMU's lock messages are recognised; other failures are not")
    func classification() {
        let write = """
            qemu-system-x86_64: -drive file=/w/c/disk.qcow2,if=none,id=d0,format=qcow2: Failed to get "write" lock
            Is another process using the image [/w/c/disk.qcow2]?
            """
        #expect(QEMULockError.imagePath(in: write) == "/w/c/disk.qcow2")
        #expect(
            QEMULockError.imagePath(
                in: "qemu-system-x86_64: -drive if=pflash,format=raw,unit=1,file=/w/c/nvram.fd: Failed to lock byte 100")
                == "/w/c/nvram.fd")
        #expect(QEMULockError.imagePath(in: "qemu-system-x86_64: -kernel /x: No such file or directory") == nil)
    }

    @Test("retries with backoff until a holder lets go; the log shows each retry")
    func retriesUntilFree() async throws {
        let (logger, log) = recordingLogger()
        let policy = LockRetryPolicy(attempts: 6, initial: .milliseconds(50), maximum: .milliseconds(400))
        let clock = ContinuousClock()
        let started = clock.now
        let freeAt = started + .milliseconds(500)
        let (value, statistics) = try await retryingLocks(policy: policy, logger: logger) { number -> LockAttemptOutcome<Int> in
            clock.now < freeAt ? .busy(file: "/x/nvram.fd", symptom: "flock: held") : .acquired(number)
        }
        #expect(value == statistics.attempts)
        #expect(statistics.attempts >= 3)
        #expect(statistics.waited > .zero)
        let retries = log.messages.filter { $0.level == .warning && $0.message.contains("is busy") }
        #expect(retries.count == statistics.attempts - 1)
        #expect(retries.first?.message.contains("retry 1/5") == true)
    }

    @Test("gives up after the configured attempts with the file, holder and effort in the error, within budget")
    func givesUp() async throws {
        try await withTemporaryDirectory { directory in
            let file = directory.appendingPathComponent("nvram.fd").path
            FileManager.default.createFile(atPath: file, contents: Data(count: 4096))
            let holder = try await lockHolder(file, kind: "flock", seconds: 60)
            let (logger, _) = recordingLogger()
            let policy = LockRetryPolicy(attempts: 4, initial: .milliseconds(50), maximum: .milliseconds(100))
            let clock = ContinuousClock()
            let started = clock.now
            let error = await #expect(throws: VMError.self) {
                _ = try await retryingLocks(policy: policy, logger: logger) { _ -> LockAttemptOutcome<Void> in
                    if let lock = try AuxiliaryStorageLock.tryAcquire(file) { return .acquired(lock.release()) }
                    return .busy(file: file, symptom: "flock: held")
                }
            }
            #expect(clock.now - started < policy.worstCaseWait + .seconds(2))
            guard case .lockUnavailable(let failure)? = error else {
                Issue.record("expected lockUnavailable, got \(String(describing: error))")
                return
            }
            #expect(failure.file == file)
            #expect(failure.attempts == 4)
            #expect(failure.holders.contains { $0.pid == holder.pid })
            #expect(failure.description.contains("pid \(holder.pid)"))
            #expect(failure.description.contains("after 4 attempts"))
        }
    }
}
