import Foundation
import Logging
import MayflyCore
import MayflyGuest
import MayflyTestSupport
import Testing

@testable import MayflyVM

/// Options for test VMs: TCG (this machine's KVM cannot boot a normal guest), no grace period
/// unless a test wants one, generous boot timeout for a loaded machine.
func testOptions() -> VMOptions {
    var options = VMOptions()
    options.accelerator = .tcg
    options.gracePeriod = .zero
    options.bootTimeout = .seconds(90)
    options.lockRetry = LockRetryPolicy(attempts: 8, initial: .milliseconds(200), maximum: .seconds(1))
    options.shutdownGrace = .seconds(5)
    return options
}

/// Asserts that nothing of the clone is left: no directory, no runtime directory, no QEMU.
func expectCleanedUp(_ workDirectory: URL, runtime: URL, key: String, sourceLocation: SourceLocation = #_sourceLocation) async {
    let clones = (try? FileManager.default.contentsOfDirectory(atPath: workDirectory.appendingPathComponent("clones").path)) ?? []
    #expect(clones.isEmpty, "clones left: \(clones)", sourceLocation: sourceLocation)
    let sockets = (try? FileManager.default.contentsOfDirectory(atPath: runtime.path)) ?? []
    #expect(sockets.isEmpty, "runtime entries left: \(sockets)", sourceLocation: sourceLocation)
    let gone = await eventually(timeout: .seconds(5)) { !qemuRunning(matching: "mayfly-\(key)") }
    #expect(gone, "a QEMU for \(key) is still running", sourceLocation: sourceLocation)
}

/// Real guests under TCG, one at a time.
@Suite("VM lifecycle with a real guest", .serialized)
struct VMLifecycleTests {
    @Test("boots the tiny guest, runs a command over SSH with the pinned per-clone host key, and removes everything after")
    func bootAndRun() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let bundle = try BundleDirectory(path: try TestBundle.tinyPath())
                let (logger, log) = recordingLogger()
                var options = testOptions()
                options.gracePeriod = .milliseconds(700)
                let runtime = directory.appendingPathComponent("run")
                let launcher = VMLauncher(
                    workDirectory: directory.path, options: options, logger: logger, runtimeBase: runtime.path)
                let phases = PhaseRecorder()
                let key = CloneDirectory.key(server: "local", job: "boot")
                let output = try await launcher.withVM(
                    bundle: bundle, server: "local", job: "boot", lifetime: .seconds(600), onPhase: phases.record
                ) { vm in
                    #expect(vm.accelerator == .tcg)
                    #expect(vm.clone.record()?.qemu?.pid == vm.qemu.pid, "owner.json names the running QEMU")
                    #expect(FileManager.default.fileExists(atPath: vm.clone.qmpSocketPath))
                    let result = try await SSHCommand(endpoint: vm.ssh).run("uname -r; cat /builds/README; echo done")
                    #expect(result.succeeded, "\(result.standardError)")
                    #expect(
                        vm.timings.grace >= .milliseconds(400), "the rest of the grace period was waited out: \(vm.timings.grace)"
                    )
                    #expect(vm.timings.grace <= .milliseconds(900))
                    #expect(vm.timings.boot > .zero && vm.timings.lockAttempts == 1)
                    // A client key the guest was not given is refused (the per-clone key replaced the bundle's).
                    let stranger = SSHEndpoint(
                        host: vm.ssh.host, port: vm.ssh.port, user: "root", privateKey: try #require(bundle.sshKeyPath),
                        knownHosts: vm.ssh.knownHosts)
                    let refused = try await SSHCommand(endpoint: stranger).run("true")
                    #expect(!refused.succeeded)
                    return result.standardOutput
                }
                #expect(output.contains("done"))
                #expect(output.contains("amd64"))
                #expect(
                    phases.names == ["clone", "clone", "grace", "grace", "lock", "lock", "boot", "boot", "cleanup", "cleanup"])
                #expect(log.allText.contains("guest is up"))
                await expectCleanedUp(directory, runtime: runtime, key: key)
            }
        }
    }

    @Test("a guest that overwrites its whole disk leaves the golden disk untouched")
    func goldenNeverWritten() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let bundle = try BundleDirectory(path: try TestBundle.copyTiny(into: directory))
                let before = try await SHA256Sum.hash([bundle.diskPath])[bundle.diskPath]
                let (logger, _) = recordingLogger()
                let runtime = directory.appendingPathComponent("run")
                let launcher = VMLauncher(
                    workDirectory: directory.path + "/work", options: testOptions(), logger: logger, runtimeBase: runtime.path)
                try await launcher.withVM(bundle: bundle, server: "local", job: "wipe", lifetime: .seconds(600)) { vm in
                    let wipe = try await SSHCommand(endpoint: vm.ssh).run(
                        "umount /builds; dd if=/dev/urandom of=/dev/vda bs=1M 2>&1 | tail -1; sync; head -c 16 /dev/vda | od -An -tx1",
                        timeout: .seconds(300))
                    #expect(wipe.succeeded, "\(wipe.standardError)")
                    #expect(
                        wipe.standardOutput.contains("records out") || wipe.standardOutput.contains("No space left"),
                        "\(wipe.standardOutput)")
                }
                let after = try await SHA256Sum.hash([bundle.diskPath])[bundle.diskPath]
                #expect(before == after)
                #expect(try await bundle.verify().isEmpty)
            }
        }
    }

    @Test("a failure right after QEMU started (the guest's host key cannot be pinned) stops QEMU and passt and deletes the clone")
    func failureAfterStartCleansUp() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                // A bundle that provisions nothing per clone and names no host key.
                let path = try TestBundle.copyTiny(into: directory)
                let manifest = try String(contentsOfFile: path + "/bundle.yaml", encoding: .utf8)
                try manifest.replacingOccurrences(of: "provision: fw_cfg", with: "provision: none")
                    .split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.contains("host_key:") }
                    .joined(separator: "\n").write(toFile: path + "/bundle.yaml", atomically: true, encoding: .utf8)
                let bundle = try BundleDirectory(path: path)
                let runtime = directory.appendingPathComponent("run")
                let launcher = VMLauncher(
                    workDirectory: directory.path + "/work", options: testOptions(), logger: Logger(label: "test"),
                    runtimeBase: runtime.path)
                let error = await #expect(throws: VMError.self) {
                    try await launcher.withVM(bundle: bundle, server: "local", job: "nokey", lifetime: .seconds(600)) { _ in }
                }
                #expect("\(error.map { "\($0)" } ?? "")".contains("cannot be pinned"))
                let key = CloneDirectory.key(server: "local", job: "nokey")
                await expectCleanedUp(directory.appendingPathComponent("work"), runtime: runtime, key: key)
                let passtGone = await eventually(timeout: .seconds(5)) {
                    !processRunning { $0.contains("passt") && !$0.contains("qemu-system") && $0.contains("/\(key)/net/") }
                }
                #expect(passtGone)
            }
        }
    }

    @Test("a failure inside the job's closure still stops QEMU and deletes the clone")
    func failureCleansUp() async throws {
        struct JobFailed: Error {}
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let bundle = try BundleDirectory(path: try TestBundle.tinyPath())
                let (logger, _) = recordingLogger()
                let runtime = directory.appendingPathComponent("run")
                let launcher = VMLauncher(
                    workDirectory: directory.path, options: testOptions(), logger: logger, runtimeBase: runtime.path)
                let qemuPID = PIDBox()
                await #expect(throws: JobFailed.self) {
                    try await launcher.withVM(bundle: bundle, server: "local", job: "fail", lifetime: .seconds(600)) { vm in
                        qemuPID.set(vm.qemu.pid)
                        throw JobFailed()
                    }
                }
                #expect(qemuPID.value > 0)
                #expect(ProcessIdentity.of(pid: qemuPID.value) == nil || ProcessIdentity.isZombie(qemuPID.value))
                await expectCleanedUp(directory, runtime: runtime, key: CloneDirectory.key(server: "local", job: "fail"))
            }
        }
    }

    @Test("a guest that does not come up in time is killed and reported with its serial console")
    func bootTimeout() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let bundle = try BundleDirectory(path: try TestBundle.tinyPath())
                let (logger, _) = recordingLogger()
                var options = testOptions()
                options.bootTimeout = .seconds(2)
                let runtime = directory.appendingPathComponent("run")
                let launcher = VMLauncher(
                    workDirectory: directory.path, options: options, logger: logger, runtimeBase: runtime.path)
                let error = await #expect(throws: VMError.self) {
                    try await launcher.withVM(bundle: bundle, server: "local", job: "slow", lifetime: .seconds(600)) { _ in
                        Issue.record("the body must not run")
                    }
                }
                guard case .bootTimedOut(let after, _)? = error else {
                    Issue.record("expected bootTimedOut, got \(String(describing: error))")
                    return
                }
                #expect(after == .seconds(2))
                await expectCleanedUp(directory, runtime: runtime, key: CloneDirectory.key(server: "local", job: "slow"))
            }
        }
    }

    @Test("cancelling the job mid-boot stops QEMU within 2 seconds and deletes the clone")
    func cancelMidBoot() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let bundle = try BundleDirectory(path: try TestBundle.tinyPath())
                let (logger, _) = recordingLogger()
                let runtime = directory.appendingPathComponent("run")
                let launcher = VMLauncher(
                    workDirectory: directory.path, options: testOptions(), logger: logger, runtimeBase: runtime.path)
                let phases = PhaseRecorder()
                let task = Task {
                    try await launcher.withVM(
                        bundle: bundle, server: "local", job: "cancel", lifetime: .seconds(600), onPhase: phases.record
                    ) { _ in
                        Issue.record("the body must not run")
                    }
                }
                let booting = await eventually(timeout: .seconds(30)) { phases.names.last == "boot" }
                #expect(booting)
                try await Task.sleep(for: .milliseconds(300))
                let key = CloneDirectory.key(server: "local", job: "cancel")
                #expect(qemuRunning(matching: "mayfly-\(key)"))
                let clock = ContinuousClock()
                let cancelled = clock.now
                task.cancel()
                let result = await task.result
                #expect(clock.now - cancelled < .seconds(2))
                #expect(throws: CancellationError.self) { try result.get() }
                await expectCleanedUp(directory, runtime: runtime, key: key)
            }
        }
    }

    @Test("a writer holding the golden disk for about 2 s delays the boot through retries, then the guest boots")
    func lockHeldBriefly() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let bundle = try BundleDirectory(path: try TestBundle.copyTiny(into: directory))
                let (logger, log) = recordingLogger()
                let runtime = directory.appendingPathComponent("run")
                let holder = try TestChild("/usr/bin/qemu-io", ["-c", "sleep 2000", bundle.diskPath])
                #expect(await eventually { ImageLockProbe.writer(on: bundle.diskPath) == true })
                let launcher = VMLauncher(
                    workDirectory: directory.path + "/work", options: testOptions(), logger: logger, runtimeBase: runtime.path)
                let attempts = try await launcher.withVM(bundle: bundle, server: "local", job: "held", lifetime: .seconds(600)) {
                    vm in
                    vm.timings.lockAttempts
                }
                #expect(attempts > 1)
                let retries = log.messages.filter { $0.message.contains("is busy") }
                #expect(!retries.isEmpty)
                #expect(retries.contains { $0.message.contains("pid \(holder.pid)") }, "the log names the holder")
                #expect(log.allText.contains("acquired after \(attempts) attempts"))
                holder.kill()
            }
        }
    }

    @Test("a writer that never lets go: the error names the file, the holder and the attempts, and nothing is left")
    func lockHeldForever() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let bundle = try BundleDirectory(path: try TestBundle.copyTiny(into: directory))
                let (logger, _) = recordingLogger()
                let runtime = directory.appendingPathComponent("run")
                let holder = try TestChild("/usr/bin/qemu-io", ["-c", "sleep 600000", bundle.diskPath])
                #expect(await eventually { ImageLockProbe.writer(on: bundle.diskPath) == true })
                var options = testOptions()
                options.lockRetry = LockRetryPolicy(attempts: 3, initial: .milliseconds(100), maximum: .milliseconds(200))
                let launcher = VMLauncher(
                    workDirectory: directory.path + "/work", options: options, logger: logger, runtimeBase: runtime.path)
                let clock = ContinuousClock()
                let started = clock.now
                let error = await #expect(throws: VMError.self) {
                    try await launcher.withVM(bundle: bundle, server: "local", job: "stuck", lifetime: .seconds(600)) { _ in }
                }
                #expect(clock.now - started < .seconds(10))
                guard case .lockUnavailable(let failure)? = error else {
                    Issue.record("expected lockUnavailable, got \(String(describing: error))")
                    return
                }
                #expect(failure.file == bundle.diskPath)
                #expect(failure.attempts == 3)
                #expect(failure.holders.contains { $0.pid == holder.pid && $0.command.contains("qemu-io") })
                holder.kill()
                await expectCleanedUp(
                    directory.appendingPathComponent("work"), runtime: runtime,
                    key: CloneDirectory.key(server: "local", job: "stuck")
                )
            }
        }
    }
}

/// Collects phase events from `withVM` (called from other tasks).
final class PhaseRecorder: @unchecked Sendable {
    private let lock = NSLock()
    private var recorded: [String] = []

    var names: [String] { lock.withLock { recorded } }

    var record: @Sendable (VMPhase, Duration?) -> Void {
        { [self] phase, _ in lock.withLock { recorded.append(phase.rawValue) } }
    }
}

final class PIDBox: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Int32 = 0
    var value: Int32 { lock.withLock { stored } }
    func set(_ pid: Int32) { lock.withLock { stored = pid } }
}

/// The UEFI path: OVMF with the clone's own NVRAM (the auxiliary storage), under Mayfly's flock.
@Suite("UEFI guest and its NVRAM lock", .serialized)
struct UEFILockTests {
    @Test(
        "a second holder of the clone's NVRAM for about 2 s delays the boot through retries; the NVRAM is locked while the VM runs"
    )
    func nvramHeldBriefly() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let bundle = try BundleDirectory(path: try TestBundle.tinyUEFIPath())
                #expect(bundle.manifest.boot.mode == .uefi)
                let (logger, log) = recordingLogger()
                var options = testOptions()
                options.gracePeriod = .seconds(1)
                let runtime = directory.appendingPathComponent("run")
                let launcher = VMLauncher(
                    workDirectory: directory.path, options: options, logger: logger, runtimeBase: runtime.path)
                let key = CloneDirectory.key(server: "local", job: "uefi")
                let nvram = directory.appendingPathComponent("clones/\(key)/nvram.fd").path
                let holder = HolderBox()
                let result = try await launcher.withVM(bundle: bundle, server: "local", job: "uefi", lifetime: .seconds(600)) {
                    phase, duration in
                    // The clone exists once the grace period starts: another "agent" grabs its NVRAM.
                    if phase == .grace && duration == nil { holder.start(nvram, seconds: 2) }
                } _: { vm -> (Int, Bool, String) in
                    let locked = (try AuxiliaryStorageLock.tryAcquire(vm.clone.nvramPath)) == nil
                    let output = try await SSHCommand(endpoint: vm.ssh).run("echo uefi-ok")
                    return (vm.timings.lockAttempts, locked, output.standardOutput)
                }
                #expect(holder.pid > 0)
                #expect(result.0 > 1, "the boot waited for the NVRAM through retries")
                #expect(result.1, "Mayfly holds the NVRAM exclusively while the VM runs")
                #expect(result.2.contains("uefi-ok"))
                #expect(
                    log.messages.contains { $0.message.contains("nvram.fd is busy") && $0.message.contains("pid \(holder.pid)") })
                await expectCleanedUp(directory, runtime: runtime, key: key)
            }
        }
    }
}

/// Starts a flock holder from a synchronous callback and remembers it.
final class HolderBox: @unchecked Sendable {
    private let lock = NSLock()
    private var child: TestChild?

    var pid: Int32 { lock.withLock { child?.pid ?? 0 } }

    func start(_ path: String, seconds: Double) {
        let script =
            "import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDONLY)\nfcntl.flock(fd, fcntl.LOCK_EX)\ntime.sleep(float(sys.argv[2]))\n"
        let started = try? TestChild("/usr/bin/env", ["python3", "-c", script, path, "\(seconds)"])
        lock.withLock { child = started }
    }
}
