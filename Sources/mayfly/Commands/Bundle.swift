import ArgumentParser
import Foundation
import Logging
import MayflyAgent
import MayflyCore
import MayflyVM

/// `mayfly bundle …`: golden bundles.
struct Bundle: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Inspect, verify and import golden VM bundles.", subcommands: [Inspect.self, Verify.self, Import.self])

    /// `mayfly bundle inspect NAME|PATH`: what a bundle is and how it boots.
    struct Inspect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a bundle's manifest and files.")

        @OptionGroup var options: ConfigOptions
        @Argument(help: "A bundle directory, or a name under <work_dir>/bundles.") var bundle: String

        func run() async throws {
            let configuration = try options.loadOrDefaults()
            let directory = try BundleDirectory.locate(bundle, bundlesDirectory: configuration.bundlesDirectory)
            let manifest = directory.manifest
            print("bundle:   \(directory.path)")
            print("name:     \(manifest.name)  (format \(manifest.format), \(manifest.arch))")
            print(
                "boot:     \(manifest.boot.mode.rawValue)" + (manifest.boot.kernel.map { ", kernel \($0)" } ?? "")
                    + (manifest.boot.initrd.map { ", initrd \($0)" } ?? "") + ", cmdline \"\(manifest.boot.cmdline)\"")
            if manifest.boot.mode == .uefi { print("firmware: \(directory.firmwarePath)") }
            print("disk:     \(manifest.disk.file) (\(manifest.disk.format.rawValue))")
            if let nvram = manifest.nvram { print("nvram:    \(nvram)") }
            print("defaults: \(manifest.cpus) cpu, \(manifest.memory)")
            print(
                "guest:    \(manifest.guest.user)@:\(manifest.guest.sshPort), key \(manifest.guest.sshKey ?? "(per clone)"), provision \(manifest.guest.provision.rawValue), workdir \(manifest.guest.workdir)"
            )
            for (path, hash) in manifest.files {
                let size = (try? FileManager.default.attributesOfItem(atPath: directory.file(path))[.size] as? UInt64) ?? 0
                print("file:     \(path)  \(ByteSize(bytes: size).approximate)  sha256 \(hash.prefix(16))…")
            }
        }
    }

    /// `mayfly bundle verify NAME|PATH`: re-hashes every file.
    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-hash every file of a bundle and report each mismatch.",
            discussion: "Exits 0 when intact, 65 (EX_DATAERR) otherwise.")

        @OptionGroup var options: ConfigOptions
        @Argument(help: "A bundle directory, or a name under <work_dir>/bundles.") var bundle: String

        func run() async throws {
            let configuration = try options.loadOrDefaults()
            let directory = try BundleDirectory.locate(bundle, bundlesDirectory: configuration.bundlesDirectory)
            let mismatches = try await directory.verify()
            if mismatches.isEmpty {
                print("\(directory.path): all \(directory.manifest.files.count) files match their sha256")
                return
            }
            for mismatch in mismatches { print("mismatch: \(mismatch)") }
            throw BundleVerificationFailed(path: directory.path, count: mismatches.count)
        }
    }

    /// `mayfly bundle import NAME --disk … [--kernel … --initrd …] [--nvram …] --ssh-key …`, or
    /// `mayfly bundle import NAME --cloud-image disk.qcow2`.
    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Build a bundle from loose files or a cloud image into <work_dir>/bundles/NAME (atomically; golden files read-only).",
            discussion: """
                --cloud-image makes a bundle from a distribution's cloud image (Debian, Ubuntu, Fedora …): every clone \
                gets a cloud-init NoCloud seed with its own login key and host key. The boot mode is UEFI when the \
                image has an EFI system partition (with the host's OVMF), else BIOS; --boot overrides it.
                """)

        @OptionGroup var options: ConfigOptions
        @Argument(help: "The new bundle's name.") var name: String
        @Option(help: "The golden disk (qcow2 or raw; detected).") var disk: String?
        @Option(name: .customLong("cloud-image"), help: "A cloud image (qcow2 or raw) to import with cloud-init defaults.")
        var cloudImage: String?
        @Option(help: "Boot mode: kernel, uefi or bios (default: detected).") var boot: String?
        @Option(help: "A kernel for direct boot.") var kernel: String?
        @Option(help: "The initrd that goes with --kernel.") var initrd: String?
        @Option(help: "The kernel command line.") var cmdline: String?
        @Option(help: "A UEFI variables template (e.g. /usr/share/OVMF/OVMF_VARS_4M.fd): makes a UEFI bundle.") var nvram: String?
        @Option(name: .customLong("ssh-key"), help: "The private key the guest authorises (only without --provision).")
        var sshKey: String?
        @Option(name: .customLong("host-key"), help: "The guest's SSH host public key, to pin.") var hostKey: String?
        @Option(help: "The guest user to log in as.") var user: String = "root"
        @Option(help: "Default virtual CPUs (default: 1, or 2 for a cloud image).") var cpus: Int?
        @Option(help: "Default memory, e.g. 1GiB (default: 512MiB, or 1GiB for a cloud image).") var memory: String?
        @Option(name: .customLong("disk-size"), help: "Grow the golden disk to this virtual size, e.g. 20GiB.") var diskSize:
            String?
        @Option(help: "Per-clone identity: none, fw_cfg or cloud-init (default: none, or cloud-init for a cloud image).")
        var provision: String?

        func run() async throws {
            let configuration = try options.loadOrDefaults()
            var request: BundleImporter.Request
            switch (disk, cloudImage) {
            case (let disk?, nil): request = BundleImporter.Request(name: name, disk: disk, sshKey: sshKey)
            case (nil, let image?): request = .cloudImage(name: name, disk: image)
            case (.some, .some): throw ValidationError("give either --disk or --cloud-image, not both")
            case (nil, nil): throw ValidationError("give the golden disk with --disk, or a cloud image with --cloud-image")
            }
            request.sshKey = sshKey
            request.kernel = kernel
            request.initrd = initrd
            request.cmdline = cmdline
            request.nvram = nvram
            request.hostKey = hostKey
            request.user = user
            if let cpus { request.cpus = cpus }
            if let boot {
                guard let mode = BundleManifest.BootMode(rawValue: boot) else {
                    throw ValidationError("--boot must be kernel, uefi or bios, not '\(boot)'")
                }
                request.bootMode = mode
            }
            if let memory {
                guard let size = try? ByteSize.parse(memory) else {
                    throw ValidationError("--memory: '\(memory)' is not a size such as 1GiB")
                }
                request.memory = size
            }
            if let diskSize {
                guard let size = try? ByteSize.parse(diskSize) else {
                    throw ValidationError("--disk-size: '\(diskSize)' is not a size such as 20GiB")
                }
                request.diskSize = size
            }
            if let provision {
                guard let mode = BundleManifest.Provisioning(rawValue: provision) else {
                    throw ValidationError("--provision must be none, fw_cfg or cloud-init, not '\(provision)'")
                }
                request.provision = mode
            }
            let imported = try await BundleImporter.importBundle(request, into: configuration.bundlesDirectory)
            let manifest = imported.manifest
            print(
                "imported bundle \(manifest.name) into \(imported.path) (boot \(manifest.boot.mode.rawValue), provision \(manifest.guest.provision.rawValue))"
            )
        }
    }
}

/// `bundle verify` found files that do not match.
struct BundleVerificationFailed: Error, CustomStringConvertible {
    let path: String
    let count: Int
    var description: String { "bundle \(path): \(count) file(s) do not match the manifest" }
}
