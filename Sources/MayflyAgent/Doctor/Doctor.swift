import Foundation
import MayflyCore
import MayflyVM

/// One line of `mayfly doctor`: what was checked, how it went, and how to fix it.
public struct DoctorCheck: Sendable {
    public enum Status: String, Sendable {
        case ok, warn, fail
    }

    public let name: String
    public let status: Status
    public let detail: String
    public let fix: String?

    public init(_ name: String, _ status: Status, _ detail: String, fix: String? = nil) {
        self.name = name
        self.status = status
        self.detail = detail
        self.fix = fix
    }
}

/// Checks that this host can run Mayfly's VMs with the given configuration: QEMU and its tools,
/// whether KVM can run a normal guest, OVMF, the SSH client, the work directory, which clone
/// strategies work there, and free disk. It changes nothing but scratch files it removes.
public struct Doctor: Sendable {
    public let configuration: Configuration
    public var kvmRoot = "/"

    public init(configuration: Configuration) { self.configuration = configuration }

    public func run() async -> [DoctorCheck] {
        var checks: [DoctorCheck] = []
        checks.append(await version("qemu-system-x86_64", ["--version"], package: "qemu-system-x86"))
        checks.append(await version("qemu-img", ["--version"], package: "qemu-utils"))
        checks.append(kvm())
        checks.append(ovmf())
        checks.append(await version("ssh", ["-V"], package: "openssh-client"))
        checks.append(setpriv())
        checks.append(network())
        checks.append(cloudInitTools())
        let workDirectory = workDirectoryCheck()
        checks.append(workDirectory)
        if workDirectory.status != .fail {
            checks.append(contentsOf: cloneStrategies())
            checks.append(freeDisk())
        }
        checks.append(bundle())
        return checks
    }

    /// The exit status `mayfly doctor` should end with: 1 if any check failed.
    public static func exitStatus(_ checks: [DoctorCheck]) -> Int32 {
        checks.contains { $0.status == .fail } ? 1 : 0
    }

    private func version(_ tool: String, _ arguments: [String], package: String) async -> DoctorCheck {
        guard let path = ExecutableLookup.find(tool) else {
            return DoctorCheck(tool, .fail, "not installed", fix: "apt-get install \(package)")
        }
        do {
            let output = try await CommandRunner.run(path, arguments, timeout: .seconds(20)).check()
            let text = output.standardOutput.isEmpty ? output.standardError : output.standardOutput
            let first = text.split(separator: "\n").first.map(String.init) ?? "present"
            return DoctorCheck(tool, .ok, "\(first) (\(path))")
        } catch {
            return DoctorCheck(tool, .fail, "\(path) does not run: \(error)", fix: "reinstall \(package)")
        }
    }

    private func kvm() -> DoctorCheck {
        let assessment = KVMAssessment.assess(root: kvmRoot)
        let choice = configuration.vm.accelerator
        if assessment.usable {
            return DoctorCheck("kvm", .ok, "\(assessment.reason); accelerator \(choice.rawValue) will use kvm")
        }
        switch choice {
        case .kvm:
            return DoctorCheck(
                "kvm", .fail, "\(assessment.reason); vm.accelerator is kvm, so VMs cannot start",
                fix: "set vm.accelerator: auto (TCG, much slower) or run on a host with hardware KVM")
        case .auto, .tcg:
            return DoctorCheck(
                "kvm", .warn, "\(assessment.reason); TCG software emulation will be used (much slower)",
                fix: choice == .tcg ? nil : "run on a host with hardware KVM (kvm_intel or kvm_amd) for full speed")
        }
    }

    private func ovmf() -> DoctorCheck {
        let candidates = ["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd"]
        if let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) {
            return DoctorCheck("ovmf", .ok, "UEFI firmware at \(found)")
        }
        return DoctorCheck(
            "ovmf", .warn, "no OVMF firmware: bundles with boot mode uefi cannot start (kernel-boot bundles can)",
            fix: "apt-get install ovmf")
    }

    private func setpriv() -> DoctorCheck {
        if let path = ExecutableLookup.find("setpriv") {
            return DoctorCheck("setpriv", .ok, "\(path): QEMU is killed if the agent dies")
        }
        return DoctorCheck(
            "setpriv", .warn, "not installed: a QEMU outlives a killed agent until the next start reaps it",
            fix: "apt-get install util-linux")
    }

    private func network() -> DoctorCheck {
        let network = configuration.vm.network
        switch network.mode {
        case .user:
            return DoctorCheck(
                "network", .warn, "vm.network: user: jobs can reach every service on this host's 127.0.0.1 through 10.0.2.2",
                fix: "install passt and set vm.network: isolated (the default)")
        case .isolated:
            guard let path = ExecutableLookup.find(network.passtExecutable) else {
                return DoctorCheck(
                    "network", .fail, "vm.network: isolated needs passt, which is not installed",
                    fix: "apt-get install passt (or set vm.network: user and accept that jobs reach the host's loopback)")
            }
            let allowed =
                network.allowHostPorts.isEmpty ? "none" : network.allowHostPorts.map(String.init).joined(separator: ", ")
            return DoctorCheck(
                "network", .ok, "isolated through \(path): the host's loopback is out of reach; allowed host ports: \(allowed)")
        }
    }

    private func cloudInitTools() -> DoctorCheck {
        if let path = ExecutableLookup.find("cloud-localds") {
            return DoctorCheck("cloud-localds", .ok, "\(path): seeds for cloud-init bundles")
        }
        return DoctorCheck(
            "cloud-localds", .warn, "not installed: bundles with guest.provision: cloud-init cannot be cloned",
            fix: "apt-get install cloud-image-utils")
    }

    private func workDirectoryCheck() -> DoctorCheck {
        let directory = configuration.workDirectory
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) else {
            var parent = (directory as NSString).deletingLastPathComponent
            while !parent.isEmpty && parent != "/" && !FileManager.default.fileExists(atPath: parent) {
                parent = (parent as NSString).deletingLastPathComponent
            }
            if FileManager.default.isWritableFile(atPath: parent.isEmpty ? "/" : parent) {
                return DoctorCheck("work_dir", .warn, "\(directory) does not exist yet; Mayfly creates it on first use")
            }
            return DoctorCheck(
                "work_dir", .fail, "\(directory) does not exist and \(parent) is not writable by this user",
                fix: "mkdir -p \(directory) as root and chown it to this user (or set work_dir)")
        }
        guard isDirectory.boolValue else {
            return DoctorCheck("work_dir", .fail, "\(directory) is not a directory", fix: "set work_dir to a directory")
        }
        let probe = directory + "/.mayfly-doctor-\(getpid())"
        guard FileManager.default.createFile(atPath: probe, contents: Data("probe".utf8)) else {
            return DoctorCheck(
                "work_dir", .fail, "\(directory) is not writable by this user",
                fix: "run as the user that owns \(directory), or chown it")
        }
        try? FileManager.default.removeItem(atPath: probe)
        return DoctorCheck("work_dir", .ok, "\(directory) is writable")
    }

    private func cloneStrategies() -> [DoctorCheck] {
        let capabilities = CloneCapabilities.probe(directory: configuration.workDirectory)
        let choice = configuration.vm.clone
        var checks = [
            DoctorCheck(
                "clone.reflink", capabilities.reflink ? .ok : (choice == .reflink ? .fail : .warn), capabilities.reflinkReason,
                fix: capabilities.reflink ? nil : "put work_dir on btrfs or XFS for instant full clones"),
            DoctorCheck(
                "clone.overlay", capabilities.overlay ? .ok : (choice == .overlay ? .fail : .warn), capabilities.overlayReason,
                fix: capabilities.overlay ? nil : "apt-get install qemu-utils"),
        ]
        let effective = choice == .auto ? capabilities.fastest : choice
        let works =
            effective == .copy || (effective == .reflink && capabilities.reflink)
            || (effective == .overlay && capabilities.overlay)
        checks.append(
            DoctorCheck(
                "clone", works ? .ok : .fail,
                "vm.clone is \(choice.rawValue): clones will be made by \(effective.rawValue)",
                fix: works ? nil : "set vm.clone: auto"))
        return checks
    }

    private func bundle() -> DoctorCheck {
        guard let name = configuration.vm.bundle else {
            return DoctorCheck(
                "bundle", .warn, "vm.bundle is not set: jobs must name their bundle",
                fix: "set vm.bundle to a bundle directory or a name under \(configuration.bundlesDirectory)")
        }
        do {
            let bundle = try BundleDirectory.locate(name, bundlesDirectory: configuration.bundlesDirectory)
            let manifest = bundle.manifest
            return DoctorCheck(
                "bundle", .ok,
                "\(bundle.path): \(manifest.boot.mode.rawValue) boot, \(manifest.disk.format.rawValue) disk, "
                    + "\(manifest.cpus) cpu, \(manifest.memory) (mayfly bundle verify re-hashes it)")
        } catch {
            return DoctorCheck("bundle", .fail, "\(error)", fix: "build or import a bundle (docs/bundles.md)")
        }
    }

    private func freeDisk() -> DoctorCheck {
        var stats = statvfs()
        guard statvfs(configuration.workDirectory, &stats) == 0 else {
            return DoctorCheck("disk", .warn, "cannot read free space of \(configuration.workDirectory)")
        }
        let free = ByteSize(bytes: UInt64(stats.f_bavail) * UInt64(stats.f_frsize))
        let detail = "\(free.approximate) free in \(configuration.workDirectory)"
        if free < .gibibytes(1) { return DoctorCheck("disk", .fail, detail, fix: "free space: every clone's writes land here") }
        if free < .gibibytes(10) { return DoctorCheck("disk", .warn, detail, fix: "keep at least 10 GiB free for clones") }
        return DoctorCheck("disk", .ok, detail)
    }
}
