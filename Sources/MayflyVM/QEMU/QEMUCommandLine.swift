import MayflyCore

/// Everything that decides QEMU's command line for one VM, and the pure function that turns it
/// into arguments (`arguments`). No I/O: tests check the arguments directly.
public struct QEMUMachineSpec: Sendable, Equatable {
    public var name: String
    public var accelerator: Accelerator
    public var cpus: Int
    public var memory: ByteSize
    public var bootMode: BundleManifest.BootMode
    public var kernel: String?
    public var initrd: String?
    public var cmdline: String
    /// UEFI code (read-only) and this clone's variables (read-write), for `uefi`.
    public var firmware: String?
    public var nvram: String?
    public var disk: String
    public var diskFormat: BundleManifest.DiskFormat
    /// Host port on 127.0.0.1 forwarded to the guest's SSH port (QEMU's user network only; with
    /// passt, passt forwards it).
    public var sshHostPort: Int
    public var sshGuestPort: Int
    /// passt's Unix socket: the guest's network is passt's (`-netdev stream`) instead of QEMU's
    /// user network.
    public var networkSocket: String?
    /// A read-only raw volume attached as a second disk (the cloud-init NoCloud seed).
    public var seedImage: String?
    public var serialLog: String
    public var qmpSocket: String
    /// fw_cfg entries (name → host file), e.g. per-clone SSH keys.
    public var firmwareConfig: [(name: String, file: String)]

    public static func == (lhs: QEMUMachineSpec, rhs: QEMUMachineSpec) -> Bool {
        lhs.arguments == rhs.arguments
    }

    public init(
        name: String, accelerator: Accelerator, cpus: Int, memory: ByteSize, bootMode: BundleManifest.BootMode, kernel: String?,
        initrd: String?, cmdline: String, firmware: String?, nvram: String?, disk: String, diskFormat: BundleManifest.DiskFormat,
        sshHostPort: Int, sshGuestPort: Int, serialLog: String, qmpSocket: String,
        firmwareConfig: [(name: String, file: String)] = [], networkSocket: String? = nil, seedImage: String? = nil
    ) {
        self.networkSocket = networkSocket
        self.seedImage = seedImage
        self.name = name
        self.accelerator = accelerator
        self.cpus = cpus
        self.memory = memory
        self.bootMode = bootMode
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.firmware = firmware
        self.nvram = nvram
        self.disk = disk
        self.diskFormat = diskFormat
        self.sshHostPort = sshHostPort
        self.sshGuestPort = sshGuestPort
        self.serialLog = serialLog
        self.qmpSocket = qmpSocket
        self.firmwareConfig = firmwareConfig
    }

    /// QEMU's arguments (without the executable). Commas in paths are doubled, as QEMU's option
    /// syntax requires.
    public var arguments: [String] {
        func escaped(_ path: String) -> String { path.replacingOccurrences(of: ",", with: ",,") }
        var arguments = [
            "-name", "mayfly-\(name)",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        ]
        arguments += accelerator.qemuArguments
        arguments += ["-smp", "\(cpus)", "-m", "\(max(64, memory.bytes >> 20))M"]
        if bootMode == .uefi, let firmware, let nvram {
            arguments += [
                "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=\(escaped(firmware))",
                "-drive", "if=pflash,format=raw,unit=1,file=\(escaped(nvram))",
            ]
        }
        if let kernel {
            arguments += ["-kernel", kernel]
            if let initrd { arguments += ["-initrd", initrd] }
            arguments += ["-append", cmdline]
        }
        arguments += [
            "-drive", "file=\(escaped(disk)),if=none,id=disk0,format=\(diskFormat.rawValue),discard=unmap",
            "-device", "virtio-blk-pci,drive=disk0",
        ]
        if let seedImage {
            arguments += [
                "-drive", "file=\(escaped(seedImage)),if=none,id=seed0,format=raw,readonly=on",
                "-device", "virtio-blk-pci,drive=seed0",
            ]
        }
        if let networkSocket {
            // The guest's own traffic goes through passt; SSH comes in on a second NIC, QEMU's
            // user network with `restrict=on` (nothing the guest starts leaves through it).
            let control = GuestNetwork.control
            arguments += [
                "-netdev", "stream,id=net0,server=off,addr.type=unix,addr.path=\(escaped(networkSocket))",
                "-device", "virtio-net-pci,netdev=net0,mac=\(GuestNetwork.uplinkMAC)",
                "-netdev",
                "user,id=net1,restrict=on,net=\(control.network),host=\(control.host),dhcpstart=\(control.guest),"
                    + "hostfwd=tcp:127.0.0.1:\(sshHostPort)-\(control.guest):\(sshGuestPort)",
                "-device", "virtio-net-pci,netdev=net1,mac=\(GuestNetwork.controlMAC)",
            ]
        } else {
            arguments += [
                "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:\(sshHostPort)-:\(sshGuestPort)",
                "-device", "virtio-net-pci,netdev=net0,mac=\(GuestNetwork.uplinkMAC)",
            ]
        }
        arguments += [
            "-chardev", "file,id=serial0,path=\(escaped(serialLog))",
            "-serial", "chardev:serial0",
            "-qmp", "unix:\(escaped(qmpSocket)),server=on,wait=off",
        ]
        for entry in firmwareConfig {
            arguments += ["-fw_cfg", "name=\(entry.name),file=\(escaped(entry.file))"]
        }
        return arguments
    }
}
