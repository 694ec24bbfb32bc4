import MayflyCore

/// The contents of a bundle's `bundle.yaml`: what the golden VM is and how to boot it.
/// `docs/bundles.md` documents each field.
public struct BundleManifest: Sendable, Equatable {
    public static let currentFormat = 1

    public enum BootMode: String, Sendable, CaseIterable {
        /// QEMU loads the kernel and initrd directly (fastest; no firmware).
        case kernel
        /// OVMF firmware with the bundle's NVRAM (auxiliary storage); the kernel may still be
        /// given directly, or come from the disk's EFI system partition.
        case uefi
        /// SeaBIOS boots the disk's own boot loader (a BIOS cloud image).
        case bios
    }

    public enum DiskFormat: String, Sendable, CaseIterable {
        case qcow2, raw
    }

    /// How a clone's own identity (login key, host key, hostname) reaches the guest.
    public enum Provisioning: String, Sendable, CaseIterable {
        /// Nothing per clone: the guest trusts the bundle's key, and its host key is the bundle's.
        case none
        /// QEMU fw_cfg entries `opt/mayfly/authorized_keys` and `opt/mayfly/host_key`.
        case fwCfg = "fw_cfg"
        /// A NoCloud seed (`cidata` volume) that cloud-init in the guest reads at boot.
        case cloudInit = "cloud-init"
    }

    public struct Boot: Sendable, Equatable {
        public var mode: BootMode
        public var kernel: String?
        public var initrd: String?
        public var cmdline: String
        /// UEFI code firmware: bundle-relative, or an absolute host path.
        public var firmware: String?
    }

    public struct Disk: Sendable, Equatable {
        public var file: String
        public var format: DiskFormat
    }

    public struct Guest: Sendable, Equatable {
        public var user: String
        public var sshPort: Int
        /// The private key the guest trusts (bundle-relative); only needed without provisioning.
        public var sshKey: String?
        /// The guest's SSH host public key, pinned by the client (bundle-relative).
        public var hostKey: String?
        public var provision: Provisioning
        /// Where jobs run inside the guest.
        public var workdir: String
    }

    public var format: Int
    public var name: String
    public var arch: String
    public var boot: Boot
    public var disk: Disk
    /// The NVRAM (UEFI variables) template; each clone gets its own copy.
    public var nvram: String?
    public var cpus: Int
    public var memory: ByteSize
    public var guest: Guest
    /// sha256 (hex) of every file in the bundle but `bundle.yaml`, by bundle-relative path.
    public var files: [(path: String, sha256: String)]

    public static func == (lhs: BundleManifest, rhs: BundleManifest) -> Bool {
        lhs.format == rhs.format && lhs.name == rhs.name && lhs.arch == rhs.arch && lhs.boot == rhs.boot && lhs.disk == rhs.disk
            && lhs.nvram == rhs.nvram && lhs.cpus == rhs.cpus && lhs.memory == rhs.memory && lhs.guest == rhs.guest
            && lhs.files.elementsEqual(rhs.files) { $0.path == $1.path && $0.sha256 == $1.sha256 }
    }

    static let topKeys = ["format", "name", "arch", "boot", "disk", "nvram", "defaults", "guest", "files"]

    /// Reads `bundle.yaml` text; errors point at `file:line:column`.
    public static func parse(_ text: String, file: String) throws(ConfigurationError) -> BundleManifest {
        guard let root = try YAMLValue.parse(text, file: file, environment: [:]), !root.isNull else {
            throw ConfigurationError(
                file: file, line: 0, column: 0, message: "is empty; a bundle manifest needs at least format, boot and disk")
        }
        let top = try root.mapping(allowed: topKeys)
        let formatValue = try top.required("format")
        let format = try formatValue.int(in: 1...1000)
        guard format <= currentFormat else {
            throw formatValue.error(
                "bundle format \(format) is newer than this Mayfly understands (\(currentFormat)); upgrade Mayfly")
        }
        let name = try top["name"]?.string() ?? ""
        let arch = try top["arch"]?.string() ?? "x86_64"
        guard arch == "x86_64" else { throw top["arch"]!.error("only x86_64 bundles are supported, not '\(arch)'") }

        let bootValue = try top.required("boot")
        let boot = try bootValue.mapping(allowed: ["mode", "kernel", "initrd", "cmdline", "firmware"])
        let mode = try boot.required("mode").choice(BootMode.self)
        let kernel = try boot["kernel"]?.string()
        let initrd = try boot["initrd"]?.string()
        if mode == .kernel && kernel == nil {
            throw bootValue.error("'boot.mode: kernel' needs 'boot.kernel'")
        }
        if mode == .bios && kernel != nil {
            throw boot["kernel"]!.error("'boot.mode: bios' boots the disk's own boot loader; use 'mode: kernel' with 'kernel'")
        }
        if initrd != nil && kernel == nil { throw boot["initrd"]!.error("'boot.initrd' needs 'boot.kernel'") }
        let bootSection = Boot(
            mode: mode, kernel: kernel, initrd: initrd, cmdline: try boot["cmdline"]?.string() ?? "console=ttyS0",
            firmware: try boot["firmware"]?.string())

        let diskValue = try top.required("disk")
        let disk = try diskValue.mapping(allowed: ["file", "format"])
        let diskSection = Disk(
            file: try disk.required("file").string(), format: try disk["format"]?.choice(DiskFormat.self) ?? .qcow2)

        let nvram = try top["nvram"]?.string()
        if mode == .uefi && nvram == nil {
            throw bootValue.error("'boot.mode: uefi' needs 'nvram' (the UEFI variables template, e.g. a copy of OVMF_VARS_4M.fd)")
        }

        var cpus = 1
        var memory = ByteSize.mebibytes(512)
        if let defaultsValue = top["defaults"] {
            let defaults = try defaultsValue.mapping(allowed: ["cpus", "memory"])
            if let value = defaults["cpus"] { cpus = try value.int(in: 1...256) }
            if let value = defaults["memory"] { memory = try value.size(atLeast: .mebibytes(64)) }
        }

        let guestValue = try top.required("guest")
        let guestMapping = try guestValue.mapping(allowed: ["user", "ssh_port", "ssh_key", "host_key", "provision", "workdir"])
        let provision = try guestMapping["provision"]?.choice(Provisioning.self) ?? .none
        let guest = Guest(
            user: try guestMapping["user"]?.string() ?? "root",
            sshPort: try guestMapping["ssh_port"]?.int(in: 1...65535) ?? 22,
            sshKey: provision == .none ? try guestMapping.required("ssh_key").string() : try guestMapping["ssh_key"]?.string(),
            hostKey: try guestMapping["host_key"]?.string(),
            provision: provision,
            workdir: try guestMapping["workdir"]?.string() ?? "/builds")

        var files: [(String, String)] = []
        if let filesValue = top["files"] {
            guard case .mapping(let mapping) = filesValue.node else {
                throw filesValue.error("'files' must map file names to sha256 values")
            }
            for (keyNode, valueNode) in mapping {
                let key = keyNode.string ?? ""
                let value = YAMLValue(node: valueNode, file: file, path: "files.\(key)", environment: [:])
                let hash = try value.string().lowercased()
                guard hash.count == 64, hash.allSatisfy({ $0.isHexDigit }) else {
                    throw value.error("'files.\(key)' must be a sha256 in hex (64 characters)")
                }
                guard !key.hasPrefix("/"), !key.split(separator: "/").contains("..") else {
                    throw YAMLValue(node: keyNode, file: file, path: "files", environment: [:])
                        .error("'\(key)' must be a path inside the bundle")
                }
                files.append((key, hash))
            }
        }
        let manifest = BundleManifest(
            format: format, name: name, arch: arch, boot: bootSection, disk: diskSection, nvram: nvram, cpus: cpus,
            memory: memory, guest: guest, files: files)
        for path in manifest.referencedFiles {
            guard !path.hasPrefix("/"), !path.split(separator: "/").contains("..") else {
                throw root.error("'\(path)' must be a path inside the bundle")
            }
        }
        return manifest
    }

    /// The bundle-relative files the manifest refers to (the firmware only when bundle-relative).
    public var referencedFiles: [String] {
        var paths = [disk.file]
        if let sshKey = guest.sshKey { paths.append(sshKey) }
        if let kernel = boot.kernel { paths.append(kernel) }
        if let initrd = boot.initrd { paths.append(initrd) }
        if let nvram { paths.append(nvram) }
        if let hostKey = guest.hostKey { paths.append(hostKey) }
        if let firmware = boot.firmware, !firmware.hasPrefix("/") { paths.append(firmware) }
        return paths
    }

    /// The manifest as `bundle.yaml` text.
    public func rendered() -> String {
        func quoted(_ text: String) -> String { "\"" + text.replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
        var lines = [
            "# Mayfly golden bundle",
            "format: \(format)",
            "name: \(quoted(name))",
            "arch: \(arch)",
            "boot:",
            "  mode: \(boot.mode.rawValue)",
        ]
        if let kernel = boot.kernel { lines.append("  kernel: \(quoted(kernel))") }
        if let initrd = boot.initrd { lines.append("  initrd: \(quoted(initrd))") }
        lines.append("  cmdline: \(quoted(boot.cmdline))")
        if let firmware = boot.firmware { lines.append("  firmware: \(quoted(firmware))") }
        lines += ["disk:", "  file: \(quoted(disk.file))", "  format: \(disk.format.rawValue)"]
        if let nvram { lines.append("nvram: \(quoted(nvram))") }
        lines += [
            "defaults:", "  cpus: \(cpus)", "  memory: \(memory)",
            "guest:", "  user: \(quoted(guest.user))", "  ssh_port: \(guest.sshPort)",
        ]
        if let sshKey = guest.sshKey { lines.append("  ssh_key: \(quoted(sshKey))") }
        if let hostKey = guest.hostKey { lines.append("  host_key: \(quoted(hostKey))") }
        lines += ["  provision: \(guest.provision.rawValue)", "  workdir: \(quoted(guest.workdir))", "files:"]
        for (path, hash) in files { lines.append("  \(quoted(path)): \(hash)") }
        return lines.joined(separator: "\n") + "\n"
    }
}
