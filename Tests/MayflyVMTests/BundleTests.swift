import Foundation
import Logging
import MayflyCore
import MayflyTestSupport
import Testing

@testable import MayflyVM

@Suite("Bundles")
struct BundleTests {
    @Test("the tiny bundle opens, names its files, and verifies intact")
    func tinyBundle() async throws {
        let bundle = try BundleDirectory(path: try TestBundle.tinyPath())
        #expect(bundle.manifest.format == 1)
        #expect(bundle.manifest.boot.mode == .kernel)
        #expect(bundle.kernelPath?.hasSuffix("/vmlinux") == true)
        #expect(bundle.diskPath.hasSuffix("/disk.qcow2"))
        #expect(bundle.manifest.guest.provision == .fwCfg)
        #expect(bundle.manifest.memory == .mebibytes(256))
        let mismatches = try await bundle.verify()
        #expect(mismatches.isEmpty, "\(mismatches)")
    }

    @Test("verify reports a changed file and a missing one")
    func verifyFindsDamage() async throws {
        try await withTemporaryDirectory { directory in
            let copy = try TestBundle.copyTiny(into: directory)
            let bundle = try BundleDirectory(path: copy)
            try "tampered\n".write(toFile: copy + "/ssh/id_ed25519.pub", atomically: false, encoding: .utf8)
            let mismatches = try await bundle.verify()
            #expect(mismatches.count == 1)
            #expect(mismatches.first?.path == "ssh/id_ed25519.pub")
            #expect(mismatches.first?.actual != nil && mismatches.first?.actual != mismatches.first?.expected)
            try FileManager.default.removeItem(atPath: copy + "/initramfs.cpio")
            #expect(throws: VMError.self) { try BundleDirectory(path: copy) }
        }
    }

    @Test("manifest errors point at file:line:column")
    func manifestErrors() {
        let cases: [(String, Int, Int, String)] = [
            ("format: 1\nboot: { mode: kernel }\ndisk: { file: d }\nguest: { ssh_key: k }\n", 2, 7, "needs 'boot.kernel'"),
            ("format: 9\n", 1, 9, "newer than this Mayfly"),
            ("format: 1\nboot: { mode: bois, kernel: k }\n", 2, 15, "one of kernel, uefi, bios"),
            ("format: 1\nboot: { mode: uefi, kernel: k }\ndisk: { file: d }\nguest: { ssh_key: k }\n", 2, 7, "needs 'nvram'"),
            (
                "format: 1\nboot: { mode: kernel, kernel: k }\ndisk: { file: d, format: vmdk }\nguest: { ssh_key: k }\n", 3, 26,
                "one of qcow2, raw"
            ),
            ("format: 1\nbooot: {}\n", 2, 1, "did you mean 'boot'?"),
            (
                "format: 1\nboot: { mode: kernel, kernel: ../../etc/passwd }\ndisk: { file: d }\nguest: { ssh_key: k }\n", 1, 1,
                "must be a path inside the bundle"
            ),
            (
                "format: 1\nboot: { mode: kernel, kernel: k }\ndisk: { file: d }\nguest: { ssh_key: k }\nfiles: { k: xyz }\n", 5,
                13,
                "sha256 in hex"
            ),
        ]
        for (text, line, column, words) in cases {
            let error = #expect(throws: ConfigurationError.self) { try BundleManifest.parse(text, file: "b/bundle.yaml") }
            #expect(error?.line == line, "\(String(describing: error))")
            #expect(error?.column == column, "\(String(describing: error))")
            #expect(error?.message.contains(words) == true, "\(String(describing: error))")
        }
    }

    @Test("a rendered manifest reads back the same")
    func roundTrip() throws {
        let bundle = try BundleDirectory(path: try TestBundle.tinyPath())
        let again = try BundleManifest.parse(bundle.manifest.rendered(), file: "x")
        #expect(again == bundle.manifest)
    }

    @Test("import builds a read-only bundle atomically and refuses to overwrite")
    func importBundle() async throws {
        try await withTemporaryDirectory { directory in
            let tiny = try BundleDirectory(path: try TestBundle.tinyPath())
            let bundles = directory.appendingPathComponent("bundles").path
            var request = BundleImporter.Request(name: "imported", disk: tiny.diskPath, sshKey: tiny.sshKeyPath)
            request.kernel = tiny.kernelPath
            request.initrd = tiny.initrdPath
            request.hostKey = tiny.hostKeyPath
            request.cmdline = "console=ttyS0 quiet"
            request.memory = .mebibytes(256)
            let imported = try await BundleImporter.importBundle(request, into: bundles)
            #expect(imported.manifest.disk.format == .qcow2, "detected with qemu-img")
            #expect(imported.manifest.boot.mode == .kernel)
            let mismatches = try await imported.verify()
            #expect(mismatches.isEmpty)
            for (path, _) in imported.manifest.files {
                let mode = try #require(
                    try FileManager.default.attributesOfItem(atPath: imported.file(path))[.posixPermissions] as? Int)
                #expect(mode & 0o222 == 0, "\(path) is read-only")
            }
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: bundles)
            #expect(leftovers == ["imported"], "no temporary directory is left")
            let located = try BundleDirectory.locate("imported", bundlesDirectory: bundles)
            #expect(located.path == imported.path)

            await #expect(throws: VMError.self) { try await BundleImporter.importBundle(request, into: bundles) }
            var uefi = request
            uefi.name = "no-nvram"
            uefi.bootMode = .uefi
            await #expect(throws: VMError.self) { try await BundleImporter.importBundle(uefi, into: bundles) }
            #expect(try FileManager.default.contentsOfDirectory(atPath: bundles) == ["imported"])
        }
    }
}

@Suite("QEMU command line")
struct QEMUCommandLineTests {
    func spec(_ mode: BundleManifest.BootMode) -> QEMUMachineSpec {
        QEMUMachineSpec(
            name: "42-abc", accelerator: .tcg, cpus: 2, memory: .gibibytes(1), bootMode: mode, kernel: "/b/vmlinux",
            initrd: "/b/initrd",
            cmdline: "console=ttyS0 quiet", firmware: mode == .uefi ? "/usr/share/OVMF/OVMF_CODE_4M.fd" : nil,
            nvram: mode == .uefi ? "/w/clones/k/nvram.fd" : nil, disk: "/w/clones/k,odd/disk.qcow2", diskFormat: .qcow2,
            sshHostPort: 40022, sshGuestPort: 22, serialLog: "/w/clones/k/serial.log", qmpSocket: "/run/mayfly/k/qmp.sock",
            firmwareConfig: [("opt/mayfly/authorized_keys", "/w/clones/k/keys/id_ed25519.pub")])
    }

    func value(after flag: String, in arguments: [String]) -> [String] {
        arguments.indices.filter { arguments[$0] == flag && $0 + 1 < arguments.count }.map { arguments[$0 + 1] }
    }

    @Test("isolated network: passt's stream for the guest's traffic, SSH only through a restricted second NIC")
    func isolatedNetwork() {
        var isolated = spec(.kernel)
        isolated.networkSocket = "/run/mayfly/k/net/passt.sock"
        let arguments = isolated.arguments
        #expect(
            value(after: "-netdev", in: arguments) == [
                "stream,id=net0,server=off,addr.type=unix,addr.path=/run/mayfly/k/net/passt.sock",
                "user,id=net1,restrict=on,net=10.0.3.0/24,host=10.0.3.2,dhcpstart=10.0.3.15,hostfwd=tcp:127.0.0.1:40022-10.0.3.15:22",
            ])
        let devices = value(after: "-device", in: arguments)
        #expect(devices.contains("virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56"))
        #expect(devices.contains("virtio-net-pci,netdev=net1,mac=52:54:00:12:34:57"))
        #expect(
            devices.firstIndex(of: "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56")! < devices.firstIndex(
                of: "virtio-net-pci,netdev=net1,mac=52:54:00:12:34:57")!, "the uplink is the first NIC")
    }

    @Test("kernel boot: no firmware, direct kernel, virtio disk, loopback-only SSH forward, serial to file, QMP socket")
    func kernelBoot() {
        let arguments = spec(.kernel).arguments
        #expect(arguments.contains("-nodefaults"))
        #expect(value(after: "-display", in: arguments) == ["none"])
        #expect(value(after: "-accel", in: arguments) == ["tcg"])
        #expect(value(after: "-cpu", in: arguments) == ["max"])
        #expect(value(after: "-smp", in: arguments) == ["2"])
        #expect(value(after: "-m", in: arguments) == ["1024M"])
        #expect(value(after: "-kernel", in: arguments) == ["/b/vmlinux"])
        #expect(value(after: "-initrd", in: arguments) == ["/b/initrd"])
        #expect(value(after: "-append", in: arguments) == ["console=ttyS0 quiet"])
        #expect(!arguments.joined(separator: " ").contains("pflash"))
        #expect(
            value(after: "-drive", in: arguments) == [
                "file=/w/clones/k,,odd/disk.qcow2,if=none,id=disk0,format=qcow2,discard=unmap"
            ])
        #expect(value(after: "-device", in: arguments).contains("virtio-blk-pci,drive=disk0"))
        #expect(value(after: "-netdev", in: arguments) == ["user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"])
        #expect(value(after: "-chardev", in: arguments) == ["file,id=serial0,path=/w/clones/k/serial.log"])
        #expect(value(after: "-qmp", in: arguments) == ["unix:/run/mayfly/k/qmp.sock,server=on,wait=off"])
        #expect(
            value(after: "-fw_cfg", in: arguments) == ["name=opt/mayfly/authorized_keys,file=/w/clones/k/keys/id_ed25519.pub"])
    }

    @Test("UEFI boot: read-only code, this clone's NVRAM read-write")
    func uefiBoot() {
        let drives = value(after: "-drive", in: spec(.uefi).arguments)
        #expect(drives.contains("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"))
        #expect(drives.contains("if=pflash,format=raw,unit=1,file=/w/clones/k/nvram.fd"))
        #expect(
            value(
                after: "-accel",
                in: QEMUMachineSpec(
                    name: "x", accelerator: .kvm, cpus: 1, memory: .mebibytes(64), bootMode: .uefi, kernel: nil, initrd: nil,
                    cmdline: "",
                    firmware: "f", nvram: "n", disk: "d", diskFormat: .raw, sshHostPort: 1, sshGuestPort: 22, serialLog: "s",
                    qmpSocket: "q"
                ).arguments) == ["kvm"])
    }
}
