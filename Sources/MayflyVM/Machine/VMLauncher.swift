import Foundation
import Logging
import MayflyCore
import Synchronization

/// Runs code inside a fresh VM and guarantees the VM is gone afterwards. `withVM` clones the
/// bundle, waits out what is left of the grace period, takes the auxiliary-storage lock (with
/// classified retries), starts QEMU, waits until the guest's SSH server answers, runs the body,
/// then stops QEMU and deletes the clone — on success, on failure, on boot timeout, on lock
/// failure and on cancellation alike.
public struct VMLauncher: Sendable {
    public let workDirectory: String
    public let options: VMOptions
    public let cloner: Cloner
    let logger: Logger
    let kvm: KVMAssessment

    public init(
        workDirectory: String, options: VMOptions, logger: Logger, runtimeBase: String = RuntimeDirectory.base(),
        kvm: KVMAssessment = .assess()
    ) {
        self.workDirectory = workDirectory
        self.options = options
        self.logger = logger
        self.kvm = kvm
        self.cloner = Cloner(
            workDirectory: workDirectory, strategy: options.clone, runtimeBase: runtimeBase, network: options.network.mode,
            logger: logger)
    }

    /// Runs `body` in a fresh VM of `bundle` for the job (`server`, `job`). `lifetime` bounds the
    /// clone (its record's deadline). `onPhase` hears each phase start (`nil`) and end (its duration).
    /// `prepared` is a clone made ahead of the job (the warm pool): it is adopted (its record
    /// names the job from now on) instead of cloning, and its grace period has usually passed.
    public func withVM<T: Sendable>(
        bundle: BundleDirectory, server: String, job: String, lifetime: Duration, prepared: Cloner.Made? = nil,
        onPhase: @escaping @Sendable (VMPhase, Duration?) -> Void = { _, _ in },
        _ body: (VirtualMachine) async throws -> T
    ) async throws -> T {
        let running = try await start(
            bundle: bundle, server: server, job: job, lifetime: lifetime, prepared: prepared, onPhase: onPhase)
        return try await run(running, onPhase: onPhase, body)
    }

    /// Runs `body` in a VM started earlier (`start`), then stops it and deletes its clone,
    /// whatever `body` does.
    public func run<T: Sendable>(
        _ running: RunningVM, onPhase: @escaping @Sendable (VMPhase, Duration?) -> Void = { _, _ in },
        _ body: (VirtualMachine) async throws -> T
    ) async throws -> T {
        do {
            let result = try await body(running.machine)
            await running.stop(graceful: true, onPhase: onPhase)
            return result
        } catch {
            await running.stop(graceful: false, onPhase: onPhase)
            throw error
        }
    }

    /// Clones (or adopts `prepared`), waits out the grace period, takes the lock, starts QEMU and
    /// waits until the guest's SSH answers. The caller owns the result and must `stop` it (or
    /// hand it to `run`); on failure everything made so far is removed before the error.
    public func start(
        bundle: BundleDirectory, server: String, job: String, lifetime: Duration, prepared: Cloner.Made? = nil,
        onPhase: @escaping @Sendable (VMPhase, Duration?) -> Void = { _, _ in }
    ) async throws -> RunningVM {
        let accelerator: Accelerator
        do {
            accelerator = try options.accelerator.resolve(kvm: kvm)
        } catch {
            if let prepared { cloner.remove(prepared.clone) }
            throw error
        }
        if options.accelerator == .auto && accelerator == .tcg {
            logger.info("using TCG software emulation: \(kvm.reason)")
        }
        onPhase(.clone, nil)
        let made: Cloner.Made
        if let prepared {
            do {
                made = try cloner.adopt(prepared, server: server, job: job, lifetime: lifetime)
            } catch {
                cloner.remove(prepared.clone)
                throw error
            }
            onPhase(.clone, .zero)
        } else {
            made = try await cloner.makeClone(bundle: bundle, server: server, job: job, lifetime: lifetime)
            onPhase(.clone, made.duration)
        }
        var timings = VMTimings(clone: prepared == nil ? made.duration : .zero)
        var booted: Booted?
        do {
            let clock = ContinuousClock()

            onPhase(.grace, nil)
            let graceStart = clock.now
            let remaining = GracePeriod.remaining(options.gracePeriod, createdAt: made.record.createdAt, now: Date())
            if remaining > .zero {
                logger.info(
                    "waiting out the grace period: \(DurationText.seconds(remaining)) of \(DurationText.format(options.gracePeriod)) left"
                )
                try await Task.sleep(for: remaining)
            }
            timings.grace = clock.now - graceStart
            onPhase(.grace, timings.grace)

            onPhase(.lock, nil)
            let lockStart = clock.now
            let launched = try await launch(bundle: bundle, made: made, accelerator: accelerator)
            booted = launched.booted
            timings.lock = launched.launchStarted - lockStart
            timings.lockAttempts = launched.statistics.attempts
            onPhase(.lock, timings.lock)

            onPhase(.boot, nil)
            try await waitForGuest(launched.booted, bundle: bundle, clone: made.clone)
            timings.boot = clock.now - launched.launchStarted
            onPhase(.boot, timings.boot)
            logger.info(
                "guest is up: boot took \(DurationText.seconds(timings.boot)) on \(accelerator.rawValue)",
                metadata: ["vm.clone": "\(made.clone.path)", "vm.qemu_pid": "\(launched.booted.qemu.pid)"])

            let machine = VirtualMachine(
                bundle: bundle, clone: made.clone, cloneStrategy: made.strategy, accelerator: accelerator,
                qemu: launched.booted.qemu, ssh: launched.booted.endpoint, timings: timings)
            return RunningVM(machine: machine, made: made, booted: launched.booted, launcher: self)
        } catch {
            await tearDown(booted, clone: made.clone, graceful: false, onPhase: onPhase)
            throw error
        }
    }

    /// Takes over a VM that was started ahead of a job (the warm pool) for that job: its clone's
    /// record names the job from now on, and its timings count nothing for clone, grace, lock
    /// and boot (they happened before the job).
    /// If the clone cannot be taken over, the VM is stopped and removed before the error.
    public func adopt(_ running: RunningVM, server: String, job: String, lifetime: Duration) async throws -> RunningVM {
        let made: Cloner.Made
        do {
            made = try cloner.adopt(running.made, server: server, job: job, lifetime: lifetime)
        } catch {
            await running.stop(graceful: false)
            throw error
        }
        var timings = VMTimings()
        timings.lockAttempts = 1
        let old = running.machine
        let machine = VirtualMachine(
            bundle: old.bundle, clone: old.clone, cloneStrategy: old.cloneStrategy, accelerator: old.accelerator, qemu: old.qemu,
            ssh: old.ssh, timings: timings)
        let attached = running.attached
        return RunningVM(
            machine: machine, made: made, booted: running.booted, launcher: self, helpers: attached.processes,
            controlPath: attached.controlPath)
    }

    /// A started QEMU and what belongs to it.
    struct Booted: Sendable {
        let qemu: QEMUProcess
        let lock: AuxiliaryStorageLock
        let endpoint: SSHEndpoint
        /// The guest's network, when it is passt's (`isolated`).
        let network: PasstProcess?
    }

    struct Launch: Sendable {
        let booted: Booted
        let statistics: LockStatistics
        let launchStarted: ContinuousClock.Instant
    }

    /// Takes the auxiliary-storage lock and starts QEMU, retrying both while something holds
    /// the clone's images.
    private func launch(bundle: BundleDirectory, made: Cloner.Made, accelerator: Accelerator) async throws -> Launch {
        let clone = made.clone
        let lockFile = bundle.nvramPath != nil ? clone.nvramPath : clone.diskPath
        var held: AuxiliaryStorageLock?
        let (launch, statistics) = try await retryingLocks(policy: options.lockRetry, logger: logger) {
            _ -> LockAttemptOutcome<(Booted, ContinuousClock.Instant)> in
            if held == nil {
                guard let taken = try AuxiliaryStorageLock.tryAcquire(lockFile) else {
                    return .busy(file: lockFile, symptom: "flock: another holder has it exclusively")
                }
                held = taken
            }
            var images = [(clone.diskPath, false)]
            if bundle.nvramPath != nil { images.append((clone.nvramPath, false)) }
            if made.strategy == .overlay { images.append((bundle.diskPath, true)) }
            for (image, backing) in images {
                let busy = backing ? ImageLockProbe.writer(on: image) : ImageLockProbe.anyLock(on: image)
                if busy == true {
                    return .busy(
                        file: image,
                        symptom: backing ? "a process holds write permission on the golden image" : "an OFD lock is held")
                }
            }
            let started = ContinuousClock().now
            do {
                let booted = try await startQEMU(bundle: bundle, clone: clone, accelerator: accelerator, lock: held!)
                return .acquired((booted, started))
            } catch VMError.qemuFailed(let what, let detail) {
                if let image = QEMULockError.imagePath(in: detail) {
                    let symptom = detail.split(separator: "\n").first.map(String.init) ?? "QEMU could not lock an image"
                    return .busy(file: image.isEmpty ? clone.diskPath : image, symptom: symptom)
                }
                throw VMError.qemuFailed(what: what, detail: detail)
            }
        }
        return Launch(booted: launch.0, statistics: statistics, launchStarted: launch.1)
    }

    private func startQEMU(bundle: BundleDirectory, clone: CloneDirectory, accelerator: Accelerator, lock: AuxiliaryStorageLock)
        async throws -> Booted
    {
        let manifest = bundle.manifest
        var firmwareConfig: [(name: String, file: String)] = []
        var hostKey = bundle.hostKeyPath
        var clientKey = bundle.sshKeyPath
        var seedImage: String?
        switch manifest.guest.provision {
        case .none: break
        case .fwCfg:
            firmwareConfig = [
                ("opt/mayfly/authorized_keys", clone.clientKeyPath + ".pub"), ("opt/mayfly/host_key", clone.hostKeyPath),
            ]
            hostKey = clone.hostKeyPath + ".pub"
            clientKey = clone.clientKeyPath
        case .cloudInit:
            seedImage = clone.seedPath
            hostKey = clone.hostKeyPath + ".pub"
            clientKey = clone.clientKeyPath
        }
        guard let clientKey else {
            throw VMError.bundle(path: bundle.path, problem: "names no SSH key for the guest and provisions none per clone")
        }
        // A port taken between our pick and QEMU's (or passt's) bind makes the forward fail: pick again.
        var lastFailure: (any Error)?
        for _ in 0..<3 {
            guard let port = SocketIO.freeLoopbackPort() else {
                throw VMError.qemuFailed(what: "could not start", detail: "no free port on 127.0.0.1")
            }
            var network: PasstProcess?
            if options.network.mode == .isolated {
                network = try await PasstProcess.start(
                    directory: clone.networkDirectory, executable: options.network.passtExecutable)
            }
            // Recorded as soon as each process runs, so that an agent that dies in between leaves
            // nothing the reaper cannot find (best effort here; the full record follows below).
            func record(qemu: ProcessIdentity?) {
                guard var record = clone.record() else { return }
                record.network = network?.identity
                if let qemu { record.qemu = qemu }
                try? record.write(to: clone.ownerPath)
            }
            if network != nil { record(qemu: nil) }
            let spec = QEMUMachineSpec(
                name: clone.key, accelerator: accelerator, cpus: options.cpus ?? manifest.cpus,
                memory: options.memory ?? manifest.memory,
                bootMode: manifest.boot.mode, kernel: bundle.kernelPath, initrd: bundle.initrdPath,
                cmdline: manifest.boot.cmdline,
                firmware: manifest.boot.mode == .uefi ? bundle.firmwarePath : nil,
                nvram: manifest.boot.mode == .uefi ? clone.nvramPath : nil,
                disk: clone.diskPath, diskFormat: clone.diskName.hasSuffix(".qcow2") ? .qcow2 : manifest.disk.format,
                sshHostPort: port, sshGuestPort: manifest.guest.sshPort, serialLog: clone.serialLogPath,
                qmpSocket: clone.qmpSocketPath,
                firmwareConfig: firmwareConfig, networkSocket: network?.socketPath, seedImage: seedImage)
            var configuration = QEMUProcess.Configuration(arguments: spec.arguments, qmpSocket: clone.qmpSocketPath)
            configuration.executable = options.qemuExecutable
            do {
                let qemu: QEMUProcess
                do {
                    qemu = try await QEMUProcess.start(configuration, logger: logger) { record(qemu: $0) }
                } catch {
                    await network?.stop()
                    throw error
                }
                do {
                    if var record = clone.record() {
                        record.qemu = qemu.identity
                        record.network = network?.identity
                        try record.write(to: clone.ownerPath)
                    }
                    let knownHosts = try knownHostsLine(port: port, hostKeyFile: hostKey)
                    do {
                        try AtomicFile.write(Data(knownHosts.utf8), to: clone.knownHostsPath, mode: 0o600)
                    } catch {
                        throw VMError.io(operation: "write", path: clone.knownHostsPath, errno: error.errno)
                    }
                } catch {
                    // Not yet handed to anyone: stop them here, or nobody will.
                    _ = await qemu.kill()
                    await network?.stop()
                    throw error
                }
                let endpoint = SSHEndpoint(
                    host: "127.0.0.1", port: port, user: manifest.guest.user, privateKey: clientKey,
                    knownHosts: clone.knownHostsPath, forwardedHostPorts: options.network.allowHostPorts)
                return Booted(qemu: qemu, lock: lock, endpoint: endpoint, network: network)
            } catch VMError.qemuFailed(let what, let detail) where detail.contains("host forwarding rule") {
                lastFailure = VMError.qemuFailed(what: what, detail: detail)
                continue
            }
        }
        throw lastFailure!
    }

    /// `[127.0.0.1]:PORT keytype key` from an OpenSSH public key file.
    private func knownHostsLine(port: Int, hostKeyFile: String?) throws(VMError) -> String {
        guard let hostKeyFile, let text = try? String(contentsOfFile: hostKeyFile, encoding: .utf8) else {
            throw .bundle(path: hostKeyFile ?? "(none)", problem: "the guest's SSH host key is unknown, so it cannot be pinned")
        }
        let fields = text.split(separator: " ")
        guard fields.count >= 2 else { throw .bundle(path: hostKeyFile, problem: "is not an OpenSSH public key") }
        return "[127.0.0.1]:\(port) \(fields[0]) \(fields[1])\n"
    }

    /// Waits until the guest's SSH server sends its banner, bounded by the boot timeout.
    private func waitForGuest(_ booted: Booted, bundle: BundleDirectory, clone: CloneDirectory) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + options.bootTimeout
        while clock.now < deadline {
            if booted.qemu.hasExited {
                let reason = await booted.qemu.wait()
                let serial = SerialLog.tail(clone.serialLogPath, lines: 20)
                throw VMError.qemuFailed(
                    what: "exited while the guest was booting (\(reason))",
                    detail: [booted.qemu.standardError.trimmingWhitespace(), serial].filter { !$0.isEmpty }.joined(
                        separator: "\n"))
            }
            if await GuestProbe.sshBanner(port: booted.endpoint.port) { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw VMError.bootTimedOut(after: options.bootTimeout, serialTail: SerialLog.tail(clone.serialLogPath, lines: 20))
    }

    /// Stops QEMU (in order when `graceful`), releases the lock and deletes the clone. Runs in
    /// its own task so that a cancelled job still cleans up completely.
    func tearDown(
        _ booted: Booted?, clone: CloneDirectory, graceful: Bool, onPhase: @escaping @Sendable (VMPhase, Duration?) -> Void
    ) async {
        let cloner = self.cloner
        let logger = self.logger
        let shutdownGrace = options.shutdownGrace
        let clock = ContinuousClock()
        let started = clock.now
        onPhase(.cleanup, nil)
        defer { onPhase(.cleanup, clock.now - started) }
        await Task {
            if let booted {
                let reason = graceful ? await booted.qemu.stop(graceful: shutdownGrace) : await booted.qemu.kill()
                logger.debug("QEMU \(reason)", metadata: ["vm.clone": "\(clone.path)"])
                await booted.network?.stop()
                booted.lock.release()
            }
            cloner.remove(clone)
        }.value
    }
}

/// What is left of the grace period for a clone made at `createdAt`.
public enum GracePeriod {
    public static func remaining(_ period: Duration, createdAt: Date, now: Date) -> Duration {
        let elapsed = Duration.milliseconds(Int64(max(0, now.timeIntervalSince(createdAt)) * 1000))
        return elapsed >= period ? .zero : period - elapsed
    }
}

/// Asks whether a guest's SSH server is up: it is when the forwarded port sends an `SSH-` banner.
/// (QEMU's user network accepts connections on the host side before the guest listens, so a
/// successful connect alone means nothing.)
public enum GuestProbe {
    public static func sshBanner(port: Int, timeout: Duration = .milliseconds(500)) async -> Bool {
        await BlockingWork.run {
            guard let fd = SocketIO.connectLoopback(port: port, timeout: timeout) else { return false }
            defer { close(fd) }
            var received: [UInt8] = []
            while received.count < 4 {
                guard let chunk = SocketIO.read(fd, limit: 256), !chunk.isEmpty else { return false }
                received += chunk
            }
            return received.starts(with: Array("SSH-".utf8))
        }
    }
}

/// A booted VM and everything that belongs to it (its QEMU, its auxiliary-storage lock, its
/// clone, and helper processes attached to it, such as a persistent SSH connection). Whoever
/// holds it must `stop` it exactly once; `VMLauncher.run` does.
public final class RunningVM: Sendable {
    let made: Cloner.Made
    let booted: VMLauncher.Booted
    let launcher: VMLauncher
    private let base: VirtualMachine
    private let helpers: Mutex<(processes: [SupervisedProcess], controlPath: String?)>

    init(
        machine: VirtualMachine, made: Cloner.Made, booted: VMLauncher.Booted, launcher: VMLauncher,
        helpers: [SupervisedProcess] = [], controlPath: String? = nil
    ) {
        self.base = machine
        self.made = made
        self.booted = booted
        self.launcher = launcher
        self.helpers = Mutex((helpers, controlPath))
    }

    /// The machine, with its SSH endpoint using the attached persistent connection, if any.
    public var machine: VirtualMachine {
        var machine = base
        machine.ssh.controlPath = helpers.withLock { $0.controlPath }
        return machine
    }

    /// Where a persistent SSH connection's control socket may live (the clone's runtime directory).
    public var controlSocketPath: String { made.clone.runtimePath + "/ssh.ctl" }

    /// Hands `process` to this VM: it is stopped (before QEMU) when the VM stops. With
    /// `controlPath`, the VM's SSH sessions go through that persistent connection from now on.
    public func attach(_ process: SupervisedProcess, controlPath: String? = nil) {
        helpers.withLock {
            $0.processes.append(process)
            if let controlPath { $0.controlPath = controlPath }
        }
    }

    var attached: (processes: [SupervisedProcess], controlPath: String?) { helpers.withLock { $0 } }

    /// When the clone was made (for recycling by age).
    public var createdAt: Date { made.record.createdAt }

    /// Whether QEMU is still running (a warm VM whose QEMU died is not used).
    public var isAlive: Bool { !booted.qemu.hasExited }

    /// Stops the attached helpers, then QEMU (in order when `graceful`), releases the lock and
    /// deletes the clone.
    public func stop(graceful: Bool, onPhase: @escaping @Sendable (VMPhase, Duration?) -> Void = { _, _ in }) async {
        for process in attached.processes { _ = await process.terminate(grace: .seconds(1)) }
        await launcher.tearDown(booted, clone: made.clone, graceful: graceful, onPhase: onPhase)
    }
}
