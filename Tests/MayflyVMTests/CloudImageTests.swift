import Foundation
import Logging
import MayflyCore
import MayflyTestSupport
import Testing
import Yams

@testable import MayflyVM

@Suite("Cloud images: provisioning in bundles, NoCloud seeds, import")
struct CloudImageTests {
    static let manifestHead = """
        format: 1
        boot: { mode: kernel, kernel: vmlinuz }
        disk: { file: disk.qcow2 }

        """

    @Test("guest.provision: cloud-init needs no bundle key; none still does; a bios bundle cannot name a kernel")
    func manifestProvisioning() throws {
        let cloud = try BundleManifest.parse(Self.manifestHead + "guest: { provision: cloud-init }\n", file: "b.yaml")
        #expect(cloud.guest.provision == .cloudInit)
        #expect(cloud.guest.sshKey == nil)
        #expect(try BundleManifest.parse(cloud.rendered(), file: "again") == cloud)

        #expect {
            try BundleManifest.parse(Self.manifestHead + "guest: { provision: none }\n", file: "b.yaml")
        } throws: { "\($0)".contains("ssh_key") && "\($0)".contains("b.yaml:4") }
        #expect {
            try BundleManifest.parse(Self.manifestHead + "guest: { provision: cloudinit }\n", file: "b.yaml")
        } throws: { "\($0)".contains("cloud-init") }
        #expect {
            try BundleManifest.parse(
                "format: 1\nboot: { mode: bios, kernel: vmlinuz }\ndisk: { file: d.qcow2 }\nguest: { provision: cloud-init }\n",
                file: "b.yaml")
        } throws: { "\($0)".contains("b.yaml:2") && "\($0)".contains("bios") }
        let bios = try BundleManifest.parse(
            "format: 1\nboot: { mode: bios }\ndisk: { file: d.qcow2 }\nguest: { provision: cloud-init }\n", file: "b.yaml")
        #expect(bios.boot.mode == .bios && bios.boot.kernel == nil)
    }

    @Test("a bios machine boots from its disk: no kernel, no pflash; the seed is a read-only second disk")
    func biosCommandLine() {
        let spec = QEMUMachineSpec(
            name: "c", accelerator: .tcg, cpus: 2, memory: .gibibytes(1), bootMode: .bios, kernel: nil, initrd: nil,
            cmdline: "", firmware: nil, nvram: nil, disk: "/w/disk.qcow2", diskFormat: .qcow2, sshHostPort: 2222,
            sshGuestPort: 22, serialLog: "/w/serial.log", qmpSocket: "/r/qmp.sock", seedImage: "/w/seed.img")
        let arguments = spec.arguments
        #expect(!arguments.contains("-kernel"))
        #expect(!arguments.joined(separator: " ").contains("pflash"))
        #expect(arguments.contains("file=/w/seed.img,if=none,id=seed0,format=raw,readonly=on"))
        let disk = arguments.firstIndex(of: "file=/w/disk.qcow2,if=none,id=disk0,format=qcow2,discard=unmap")
        let seed = arguments.firstIndex(of: "file=/w/seed.img,if=none,id=seed0,format=raw,readonly=on")
        #expect(disk != nil && seed != nil && disk! < seed!, "the golden disk stays the first disk (vda)")
    }

    @Test("the seed's user data carries this clone's login key and host key, and parses as YAML with the keys cloud-init reads")
    func seedUserData() throws {
        let seed = CloudInitSeed(
            instanceID: "mayfly-job-1-abc", hostname: CloudInitSeed.hostname(forClone: "1234-ab_CD"), user: "root",
            authorizedKey: "ssh-ed25519 AAAAlogin mayfly-client\n",
            hostPrivateKey: "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\nNzaC1\n-----END OPENSSH PRIVATE KEY-----\n",
            hostPublicKey: "ssh-ed25519 AAAAhost mayfly-host\n")
        #expect(seed.hostname == "mayfly-1234-ab-cd")
        #expect(seed.userData.hasPrefix("#cloud-config\n"))
        let userData = try #require(try Yams.load(yaml: seed.userData) as? [String: Any])
        #expect(userData["disable_root"] as? Bool == false)
        #expect(userData["ssh_authorized_keys"] as? [String] == ["ssh-ed25519 AAAAlogin mayfly-client"])
        #expect(userData["ssh_pwauth"] == nil, "setting ssh_pwauth makes cloud-init restart sshd during the first login")
        let keys = try #require(userData["ssh_keys"] as? [String: String])
        #expect(keys["ed25519_private"]?.hasPrefix("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n") == true)
        #expect(keys["ed25519_public"] == "ssh-ed25519 AAAAhost mayfly-host")
        #expect(userData["ssh_genkeytypes"] == nil && userData["users"] == nil, "empty lists fail cloud-init's schema")
        let meta = try #require(try Yams.load(yaml: seed.metaData) as? [String: String])
        #expect(meta == ["instance-id": "mayfly-job-1-abc", "local-hostname": "mayfly-1234-ab-cd"])

        var user = seed
        user.user = "ci"
        let userConfig = try #require(try Yams.load(yaml: user.userData) as? [String: Any])
        let users = try #require(userConfig["users"] as? [[String: Any]])
        #expect(users.first?["name"] as? String == "ci")
        #expect(users.first?["ssh_authorized_keys"] as? [String] == ["ssh-ed25519 AAAAlogin mayfly-client"])
    }

    @Test("the network config gives the uplink DHCP and, when isolated, the SSH NIC its fixed address, matched by MAC")
    func seedNetworkConfig() throws {
        var seed = CloudInitSeed(
            instanceID: "i", hostname: "h", user: "root", authorizedKey: "k", hostPrivateKey: "p", hostPublicKey: "q")
        let isolated = try #require(try Yams.load(yaml: seed.networkConfig) as? [String: Any])
        let ethernets = try #require(isolated["ethernets"] as? [String: [String: Any]])
        #expect((ethernets["uplink"]?["match"] as? [String: String])?["macaddress"] == GuestNetwork.uplinkMAC)
        #expect(ethernets["uplink"]?["dhcp4"] as? Bool == true)
        #expect((ethernets["control"]?["match"] as? [String: String])?["macaddress"] == GuestNetwork.controlMAC)
        #expect(ethernets["control"]?["addresses"] as? [String] == ["10.0.3.15/24"])
        #expect(ethernets["control"]?["gateway4"] == nil, "no route through the SSH NIC")
        seed.network = .user
        let user = try #require(try Yams.load(yaml: seed.networkConfig) as? [String: Any])
        #expect((user["ethernets"] as? [String: Any])?.keys.sorted() == ["uplink"])
    }

    @Test("a clone of a cloud-init bundle gets fresh keys and a cidata volume holding them; both go with the clone")
    func cloneSeed() async throws {
        try await withTemporaryDirectory { directory in
            let bundleDirectory = directory.appendingPathComponent("bundle")
            try FileManager.default.createDirectory(at: bundleDirectory, withIntermediateDirectories: true)
            try TestBundle.run("/usr/bin/qemu-img", ["create", "-q", "-f", "qcow2", bundleDirectory.path + "/disk.qcow2", "64M"])
            try Data("x".utf8).write(to: bundleDirectory.appendingPathComponent("vmlinuz"))
            try Data((Self.manifestHead + "guest: { provision: cloud-init }\n").utf8).write(
                to: bundleDirectory.appendingPathComponent("bundle.yaml"))
            let bundle = try BundleDirectory(path: bundleDirectory.path)
            let cloner = Cloner(
                workDirectory: directory.path + "/work", strategy: .overlay, runtimeBase: directory.path + "/run",
                logger: Logger(label: "test"))
            let first = try await cloner.makeClone(bundle: bundle, server: "s", job: "1", lifetime: .seconds(60))
            let second = try await cloner.makeClone(bundle: bundle, server: "s", job: "2", lifetime: .seconds(60))
            let label = try TestBundle.output("/usr/sbin/blkid", ["-o", "value", "-s", "LABEL", first.clone.seedPath])
            #expect(label.trimmingWhitespace().lowercased() == "cidata")
            let userData = try String(contentsOfFile: first.clone.seedSourcesPath + "/user-data", encoding: .utf8)
            let loginKey = try String(contentsOfFile: first.clone.clientKeyPath + ".pub", encoding: .utf8)
            let hostKey = try String(contentsOfFile: first.clone.hostKeyPath + ".pub", encoding: .utf8)
            #expect(userData.contains(loginKey.split(separator: " ")[1]))
            #expect(userData.contains(hostKey.split(separator: " ")[1]))
            let otherLoginKey = try String(contentsOfFile: second.clone.clientKeyPath + ".pub", encoding: .utf8)
            #expect(loginKey != otherLoginKey, "every clone has its own key")
            let meta = try String(contentsOfFile: first.clone.seedSourcesPath + "/meta-data", encoding: .utf8)
            let otherMeta = try String(contentsOfFile: second.clone.seedSourcesPath + "/meta-data", encoding: .utf8)
            #expect(meta != otherMeta, "every clone has its own instance id")
            // The seed image is ISO 9660 and holds the user data itself.
            let image = try Data(contentsOf: URL(fileURLWithPath: first.clone.seedPath))
            #expect(image.range(of: Data(hostKey.split(separator: " ")[1].utf8)) != nil)

            cloner.remove(first.clone)
            cloner.remove(second.clone)
            #expect(!FileManager.default.fileExists(atPath: first.clone.seedPath))
            #expect(!FileManager.default.fileExists(atPath: first.clone.keysPath))
        }
    }

    @Test("the EFI system partition is found in a GPT and in an MBR; a plain MBR disk is not UEFI")
    func partitionTables() async throws {
        try await withTemporaryDirectory { directory in
            func disk(_ name: String, _ layout: String) throws -> String {
                let path = directory.path + "/" + name
                try TestBundle.run("/usr/bin/truncate", ["-s", "64M", path])
                let script = directory.path + "/\(name).sfdisk"
                try Data(layout.utf8).write(to: URL(fileURLWithPath: script))
                try TestBundle.run("/bin/sh", ["-c", "/usr/sbin/sfdisk -q '\(path)' < '\(script)'"])
                let qcow2 = path + ".qcow2"
                try TestBundle.run("/usr/bin/qemu-img", ["convert", "-q", "-O", "qcow2", path, qcow2])
                return qcow2
            }
            let gptUEFI = try disk(
                "gpt-uefi", "label: gpt\nsize=8M, type=21686148-6449-6E6F-744E-656564454649\nsize=16M, type=U\ntype=L\n")
            let gptBIOS = try disk("gpt-bios", "label: gpt\nsize=8M, type=21686148-6449-6E6F-744E-656564454649\ntype=L\n")
            let mbrESP = try disk("mbr-esp", "label: dos\nsize=16M, type=ef\ntype=83\n")
            let mbrLinux = try disk("mbr-linux", "label: dos\ntype=83, bootable\n")
            #expect(try await PartitionTable.hasEFISystemPartition(gptUEFI))
            #expect(try await !PartitionTable.hasEFISystemPartition(gptBIOS))
            #expect(try await PartitionTable.hasEFISystemPartition(mbrESP))
            #expect(try await !PartitionTable.hasEFISystemPartition(mbrLinux))

            let bundles = directory.path + "/bundles"
            let uefi = try await BundleImporter.importBundle(.cloudImage(name: "cloud-uefi", disk: gptUEFI), into: bundles)
            #expect(uefi.manifest.boot.mode == .uefi)
            #expect(uefi.manifest.nvram == "nvram.fd", "the host's OVMF variables template was copied")
            #expect(uefi.manifest.guest.provision == .cloudInit && uefi.manifest.guest.sshKey == nil)
            #expect(uefi.manifest.cpus == 2 && uefi.manifest.memory == .gibibytes(1))
            var request = BundleImporter.Request.cloudImage(name: "cloud-bios", disk: mbrLinux)
            request.diskSize = .gibibytes(4)
            let bios = try await BundleImporter.importBundle(request, into: bundles)
            #expect(bios.manifest.boot.mode == .bios && bios.manifest.nvram == nil)
            let info = try TestBundle.output("/usr/bin/qemu-img", ["info", bios.diskPath])
            #expect(info.contains("virtual size: 4 GiB"), "the golden disk was grown: \(info)")
            #expect(try await bios.verify().isEmpty, "hashes are taken after the resize")
        }
    }
}
