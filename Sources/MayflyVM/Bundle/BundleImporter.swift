import Foundation
import MayflyCore

/// Builds a bundle from loose files (a disk, a kernel and initrd, an NVRAM template, the SSH key
/// the guest trusts) or from a distribution's cloud image (`cloudImage`) into the bundles directory. It works in a temporary directory beside the
/// target and renames it into place at the end, so a failed import leaves nothing behind and a
/// half-written bundle is never visible. The golden files are made read-only.
public enum BundleImporter {
    public struct Request: Sendable {
        public var name: String
        public var disk: String
        /// `nil`: detected with `qemu-img info`.
        public var diskFormat: BundleManifest.DiskFormat?
        public var kernel: String?
        public var initrd: String?
        public var cmdline: String?
        public var nvram: String?
        /// `nil`: `uefi` when an NVRAM template is given, `kernel` otherwise.
        public var bootMode: BundleManifest.BootMode?
        /// Needed only without provisioning (the guest then trusts this key for every clone).
        public var sshKey: String?
        public var hostKey: String?
        public var user = "root"
        public var sshPort = 22
        public var provision: BundleManifest.Provisioning = .none
        public var workdir = "/builds"
        public var cpus = 1
        public var memory = ByteSize.mebibytes(512)
        /// Grow the golden disk to this virtual size (the guest's cloud-init grows its filesystem).
        public var diskSize: ByteSize?

        public init(name: String, disk: String, sshKey: String?) {
            self.name = name
            self.disk = disk
            self.sshKey = sshKey
        }

        /// Defaults for a distribution's cloud image (Debian, Ubuntu, Fedora …): cloud-init
        /// provisioning, root login, 2 CPUs and 1 GiB, and the boot mode its partition table
        /// shows (UEFI when it has an EFI system partition, with the host's OVMF variables
        /// template, else BIOS) unless `bootMode` says otherwise.
        public static func cloudImage(name: String, disk: String) -> Request {
            var request = Request(name: name, disk: disk, sshKey: nil)
            request.provision = .cloudInit
            request.cpus = 2
            request.memory = .gibibytes(1)
            request.cloudImage = true
            return request
        }

        /// Set by `cloudImage`: the boot mode is detected and UEFI gets the host's OVMF variables.
        public var cloudImage = false
    }

    /// The host's UEFI variables template, used for UEFI cloud images.
    public static let defaultNVRAMTemplate = "/usr/share/OVMF/OVMF_VARS_4M.fd"

    public static func importBundle(_ request: Request, into bundlesDirectory: String) async throws(VMError) -> BundleDirectory {
        let name = request.name
        guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }),
            !name.hasPrefix(".")
        else {
            throw .bundle(
                path: name, problem: "a bundle name uses letters, digits, '.', '_' and '-' only, and does not start with '.'")
        }
        let target = bundlesDirectory + "/" + name
        guard !FileManager.default.fileExists(atPath: target) else {
            throw .bundle(path: target, problem: "already exists; remove it first or import under another name")
        }
        var request = request
        for source in [request.disk]
            + [request.sshKey, request.kernel, request.initrd, request.nvram, request.hostKey].compactMap({ $0 })
        where !FileManager.default.isReadableFile(atPath: source) {
            throw .bundle(path: target, problem: "cannot read \(source)")
        }
        if request.provision == .none && request.sshKey == nil {
            throw .bundle(
                path: target, problem: "without per-clone provisioning the guest's key is needed (--ssh-key), or use --provision")
        }
        if request.cloudImage {
            if request.bootMode == nil {
                request.bootMode = try await PartitionTable.hasEFISystemPartition(request.disk) ? .uefi : .bios
            }
            if request.bootMode == .uefi && request.nvram == nil { request.nvram = defaultNVRAMTemplate }
        }
        let mode = request.bootMode ?? (request.nvram != nil ? .uefi : .kernel)
        if mode == .kernel && request.kernel == nil {
            throw .bundle(path: target, problem: "a kernel-boot bundle needs --kernel (or give --nvram for UEFI boot)")
        }
        if mode == .uefi && request.nvram == nil {
            throw .bundle(path: target, problem: "a UEFI bundle needs --nvram (e.g. /usr/share/OVMF/OVMF_VARS_4M.fd)")
        }
        let format: BundleManifest.DiskFormat
        if let given = request.diskFormat { format = given } else { format = try await detectFormat(request.disk) }

        do {
            try FileManager.default.createDirectory(atPath: bundlesDirectory, withIntermediateDirectories: true)
        } catch {
            throw .io(operation: "create", path: bundlesDirectory, errno: EACCES)
        }
        let temporary = bundlesDirectory + "/.import-\(name)-\(UUID().uuidString.prefix(8))"
        guard mkdir(temporary, 0o755) == 0 else { throw .io(operation: "create", path: temporary, errno: errno) }
        var moved = false
        defer { if !moved { try? FileManager.default.removeItem(atPath: temporary) } }
        guard mkdir(temporary + "/ssh", 0o755) == 0 else {
            throw .io(operation: "create", path: temporary + "/ssh", errno: errno)
        }

        var copies: [(source: String, relative: String, mode: mode_t)] = [(request.disk, "disk.\(format.rawValue)", 0o444)]
        if let sshKey = request.sshKey { copies.append((sshKey, "ssh/id_key", 0o400)) }
        if let kernel = request.kernel { copies.append((kernel, "kernel", 0o444)) }
        if let initrd = request.initrd { copies.append((initrd, "initrd", 0o444)) }
        if let nvram = request.nvram { copies.append((nvram, "nvram.fd", 0o444)) }
        if let hostKey = request.hostKey { copies.append((hostKey, "ssh/host_key.pub", 0o444)) }
        for copy in copies {
            try await FileCopier.sparseCopy(from: copy.source, to: temporary + "/" + copy.relative)
        }
        if let diskSize = request.diskSize {
            let disk = temporary + "/disk.\(format.rawValue)"
            do {
                _ = try await CommandRunner.run(
                    "qemu-img", ["resize", "-q", "-f", format.rawValue, disk, "\(diskSize.bytes)"], timeout: .seconds(120)
                ).check()
            } catch {
                throw .command(executable: "qemu-img resize", status: error.reason, stderr: error.standardError)
            }
        }
        let hashes = try await SHA256Sum.hash(copies.map { temporary + "/" + $0.relative })
        let manifest = BundleManifest(
            format: BundleManifest.currentFormat, name: name, arch: "x86_64",
            boot: .init(
                mode: mode, kernel: request.kernel == nil ? nil : "kernel", initrd: request.initrd == nil ? nil : "initrd",
                cmdline: request.cmdline ?? "console=ttyS0", firmware: nil),
            disk: .init(file: "disk.\(format.rawValue)", format: format),
            nvram: request.nvram == nil ? nil : "nvram.fd", cpus: request.cpus, memory: request.memory,
            guest: .init(
                user: request.user, sshPort: request.sshPort, sshKey: request.sshKey == nil ? nil : "ssh/id_key",
                hostKey: request.hostKey == nil ? nil : "ssh/host_key.pub", provision: request.provision,
                workdir: request.workdir),
            files: copies.map { ($0.relative, hashes[temporary + "/" + $0.relative] ?? "") })
        let manifestPath = temporary + "/" + BundleDirectory.manifestName
        guard FileManager.default.createFile(atPath: manifestPath, contents: Data(manifest.rendered().utf8)) else {
            throw .io(operation: "write", path: manifestPath, errno: EIO)
        }
        for copy in copies { chmod(temporary + "/" + copy.relative, copy.mode) }
        chmod(manifestPath, 0o444)
        guard rename(temporary, target) == 0 else { throw .io(operation: "rename into place", path: target, errno: errno) }
        moved = true
        return try BundleDirectory(path: target)
    }

    static func detectFormat(_ disk: String) async throws(VMError) -> BundleManifest.DiskFormat {
        let output: CommandRunner.Output
        do {
            output = try await CommandRunner.run("qemu-img", ["info", "--output=json", disk], timeout: .seconds(30)).check()
        } catch {
            throw .command(executable: "qemu-img info", status: error.reason, stderr: error.standardError)
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(output.standardOutput.utf8)) as? [String: Any],
            let name = object["format"] as? String
        else { throw .bundle(path: disk, problem: "qemu-img could not tell the disk's format") }
        guard let format = BundleManifest.DiskFormat(rawValue: name) else {
            throw .bundle(
                path: disk, problem: "disk format '\(name)' is not supported; convert it with qemu-img convert -O qcow2")
        }
        return format
    }
}

/// Reads a disk image's partition table (through `qemu-img dd`, so qcow2 works too) to tell how
/// the image boots.
public enum PartitionTable {
    static let efiSystemPartition: [UInt8] = [  // C12A7328-F81F-11D2-BA4B-00A0C93EC93B, on-disk byte order
        0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B,
    ]

    /// Whether the disk has a GPT with an EFI system partition, or an MBR partition of type 0xEF.
    public static func hasEFISystemPartition(_ disk: String) async throws(VMError) -> Bool {
        let head = try await readHead(disk, bytes: 64 * 1024)
        return hasEFISystemPartition(head: head)
    }

    /// The same, from the first bytes of the disk (the protective MBR, the GPT header at LBA 1
    /// and its entries).
    public static func hasEFISystemPartition(head: [UInt8]) -> Bool {
        guard head.count >= 1024 else { return false }
        if head[510] == 0x55 && head[511] == 0xAA {
            for index in 0..<4 where head[446 + index * 16 + 4] == 0xEF { return true }
        }
        guard Array(head[512..<520]) == Array("EFI PART".utf8) else { return false }
        func le32(_ at: Int) -> Int { (0..<4).reduce(0) { $0 | Int(head[at + $1]) << (8 * $1) } }
        func le64(_ at: Int) -> Int { (0..<8).reduce(0) { $0 | Int(head[at + $1]) << (8 * $1) } }
        let entriesStart = le64(512 + 72) * 512
        let count = le32(512 + 80)
        let size = le32(512 + 84)
        guard size >= 128 else { return false }
        for index in 0..<min(count, 256) {
            let offset = entriesStart + index * size
            guard offset + 16 <= head.count else { break }
            if Array(head[offset..<offset + 16]) == efiSystemPartition { return true }
        }
        return false
    }

    private static func readHead(_ disk: String, bytes: Int) async throws(VMError) -> [UInt8] {
        let temporary = NSTemporaryDirectory() + "mayfly-head-\(UUID().uuidString.prefix(8))"
        defer { unlink(temporary) }
        do {
            _ = try await CommandRunner.run(
                "qemu-img", ["dd", "-O", "raw", "bs=\(bytes)", "count=1", "if=\(disk)", "of=\(temporary)"],
                timeout: .seconds(60)
            ).check()
        } catch {
            throw .command(executable: "qemu-img dd", status: error.reason, stderr: error.standardError)
        }
        guard let data = FileManager.default.contents(atPath: temporary) else {
            throw .io(operation: "read", path: temporary, errno: EIO)
        }
        return Array(data)
    }
}

/// Copies files the way clones and imports need: sparse (holes stay holes) and, where the
/// filesystem can, as a reflink.
public enum FileCopier {
    public static func sparseCopy(from source: String, to destination: String) async throws(VMError) {
        do {
            _ = try await CommandRunner.run(
                "cp", ["--sparse=always", "--reflink=auto", "--", source, destination], timeout: .seconds(3600)
            ).check()
        } catch {
            throw .command(executable: "cp \(source)", status: error.reason, stderr: error.standardError)
        }
    }
}
