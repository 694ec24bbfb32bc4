import Foundation
import MayflyCore

/// Builds a bundle from loose files (a disk, a kernel and initrd, an NVRAM template, the SSH key
/// the guest trusts) into the bundles directory. It works in a temporary directory beside the
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
        public var sshKey: String
        public var hostKey: String?
        public var user = "root"
        public var sshPort = 22
        public var keys: BundleManifest.KeyDelivery = .none
        public var workdir = "/builds"
        public var cpus = 1
        public var memory = ByteSize.mebibytes(512)

        public init(name: String, disk: String, sshKey: String) {
            self.name = name
            self.disk = disk
            self.sshKey = sshKey
        }
    }

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
        for source in [request.disk, request.sshKey]
            + [request.kernel, request.initrd, request.nvram, request.hostKey].compactMap({ $0 })
        where !FileManager.default.isReadableFile(atPath: source) {
            throw .bundle(path: target, problem: "cannot read \(source)")
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

        var copies: [(source: String, relative: String, mode: mode_t)] = [
            (request.disk, "disk.\(format.rawValue)", 0o444), (request.sshKey, "ssh/id_key", 0o400),
        ]
        if let kernel = request.kernel { copies.append((kernel, "kernel", 0o444)) }
        if let initrd = request.initrd { copies.append((initrd, "initrd", 0o444)) }
        if let nvram = request.nvram { copies.append((nvram, "nvram.fd", 0o444)) }
        if let hostKey = request.hostKey { copies.append((hostKey, "ssh/host_key.pub", 0o444)) }
        for copy in copies {
            try await FileCopier.sparseCopy(from: copy.source, to: temporary + "/" + copy.relative)
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
                user: request.user, sshPort: request.sshPort, sshKey: "ssh/id_key",
                hostKey: request.hostKey == nil ? nil : "ssh/host_key.pub", keys: request.keys, workdir: request.workdir),
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
