import Foundation
import Logging
import MayflyCore
import MayflyTestSupport
import MayflyVM
import Testing

@testable import MayflyAgent

@Suite("KVM assessment and doctor")
struct DoctorTests {
    /// Builds a fake root with the given files under it, to stand in for /dev and /sys.
    func fakeRoot(_ directory: URL, files: [String]) throws -> String {
        for file in files {
            let url = directory.appendingPathComponent(file)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            if file.hasPrefix("sys/module/") {
                try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
            } else {
                FileManager.default.createFile(atPath: url.path, contents: Data())
            }
        }
        return directory.path
    }

    @Test("a nested PVM KVM is never used, whatever else is loaded")
    func pvmRefused() async throws {
        try await withTemporaryDirectory { directory in
            let root = try fakeRoot(
                directory, files: ["dev/kvm", "sys/module/kvm", "sys/module/kvm_pvm", "sys/module/kvm_intel"])
            let assessment = KVMAssessment.assess(root: root)
            #expect(!assessment.usable)
            #expect(assessment.reason.contains("PVM"))
            #expect(try AcceleratorChoice.auto.resolve(kvm: assessment) == .tcg)
            #expect(try AcceleratorChoice.tcg.resolve(kvm: assessment) == .tcg)
            let error = #expect(throws: VMError.self) { try AcceleratorChoice.kvm.resolve(kvm: assessment) }
            #expect(error?.description.contains("PVM") == true)
        }
    }

    @Test("a hardware KVM is used by auto; no /dev/kvm or no vendor module means TCG")
    func hardwareAndMissing() async throws {
        try await withTemporaryDirectory { directory in
            let hardware = try fakeRoot(directory.appendingPathComponent("a"), files: ["dev/kvm", "sys/module/kvm_amd"])
            let usable = KVMAssessment.assess(root: hardware)
            #expect(usable.usable, "\(usable.reason)")
            #expect(try AcceleratorChoice.auto.resolve(kvm: usable) == .kvm)

            let none = try fakeRoot(directory.appendingPathComponent("b"), files: ["sys/module/kvm_intel"])
            #expect(!KVMAssessment.assess(root: none).usable)
            #expect(KVMAssessment.assess(root: none).reason.contains("does not exist"))

            let noVendor = try fakeRoot(directory.appendingPathComponent("c"), files: ["dev/kvm", "sys/module/kvm"])
            #expect(!KVMAssessment.assess(root: noVendor).usable)
        }
    }

    @Test("this machine's own KVM is judged unusable when it is a PVM one")
    func thisMachine() throws {
        let assessment = KVMAssessment.assess()
        if FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm") {
            #expect(!assessment.usable)
            #expect(try AcceleratorChoice.auto.resolve(kvm: assessment) == .tcg)
        }
    }

    @Test("reflink is probed for real; overlay needs qemu-img")
    func cloneCapabilities() async throws {
        try await withTemporaryDirectory { directory in
            let capabilities = CloneCapabilities.probe(directory: directory.path)
            #expect(capabilities.overlay == (ExecutableLookup.find("qemu-img") != nil))
            // The probe leaves nothing behind.
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            #expect(leftovers.isEmpty)
            if !capabilities.reflink { #expect(capabilities.reflinkReason.contains("FICLONE")) }
            #expect(capabilities.fastest == (capabilities.reflink ? .reflink : capabilities.overlay ? .overlay : .copy))
        }
    }

    @Test("doctor reports every check, and fails on a missing work directory with a fix")
    func doctorRun() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = Configuration(name: "t")
            configuration.workDirectory = directory.path
            configuration.vm.accelerator = .tcg
            let checks = await Doctor(configuration: configuration).run()
            let names = checks.map(\.name)
            for expected in [
                "qemu-system-x86_64", "qemu-img", "kvm", "ovmf", "ssh", "setpriv", "work_dir", "clone.reflink",
                "clone.overlay", "clone", "disk",
            ] {
                #expect(names.contains(expected), "doctor checks \(expected)")
            }
            #expect(checks.first { $0.name == "work_dir" }?.status == .ok)
            #expect(checks.first { $0.name == "qemu-img" }?.status == .ok)

            configuration.workDirectory = directory.appendingPathComponent("missing").path
            let creatable = await Doctor(configuration: configuration).run()
            #expect(
                creatable.first { $0.name == "work_dir" }?.status == .warn,
                "a missing work_dir in a writable place is made on first use")

            let readOnly = directory.appendingPathComponent("read-only")
            try FileManager.default.createDirectory(
                at: readOnly, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o555])
            configuration.workDirectory = readOnly.appendingPathComponent("work").path
            let missing = await Doctor(configuration: configuration).run()
            let workDirectory = try #require(missing.first { $0.name == "work_dir" })
            if getuid() != 0 {
                #expect(workDirectory.status == .fail)
                #expect(workDirectory.fix?.contains("mkdir -p") == true)
                #expect(Doctor.exitStatus(missing) == 1)
            } else {
                #expect(workDirectory.status == .warn, "root can write anywhere")
            }

            configuration.workDirectory = directory.path
            configuration.vm.clone = .reflink
            let reflink = await Doctor(configuration: configuration).run()
            if !CloneCapabilities.probe(directory: directory.path).reflink {
                #expect(reflink.first { $0.name == "clone" }?.status == .fail, "an explicit reflink that cannot work fails")
            }
        }
    }
}

@Suite("Log lines")
struct LogHandlerTests {
    @Test("text and JSON lines carry the message and metadata, and secrets stay redacted")
    func formats() throws {
        let sink = LogSink()
        var logger = Logger(label: "mayfly") { MayflyLogHandler(label: $0, level: .debug, format: .json, sink: sink) }
        logger[metadataKey: "job.id"] = "42"
        logger.info("job started", metadata: ["token": "\(Secret("glrt-hidden"))"])
        let line = try #require(sink.contents.split(separator: "\n").first)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["msg"] as? String == "job started")
        #expect(object["level"] as? String == "info")
        #expect(object["job.id"] as? String == "42")
        #expect(object["time"] is String)
        #expect(!sink.contents.contains("glrt-hidden"))

        let textSink = LogSink()
        let text = Logger(label: "mayfly") { MayflyLogHandler(label: $0, level: .info, format: .text, sink: textSink) }
        text.debug("hidden below the level")
        text.warning("disk low", metadata: ["vm.clone": "a b"])
        #expect(textSink.contents.contains("warning disk low vm.clone=\"a b\""))
        #expect(!textSink.contents.contains("hidden below"))
    }

    @Test("timestamps are UTC with milliseconds, zero-padded")
    func timestamps() throws {
        #expect(MayflyLogHandler.timestamp(timespec(tv_sec: 0, tv_nsec: 0)) == "1970-01-01T00:00:00.000Z")
        #expect(MayflyLogHandler.timestamp(timespec(tv_sec: 1_795_628_174, tv_nsec: 123_999_999)) == "2026-11-25T17:36:14.123Z")
        #expect(
            MayflyLogHandler.timestamp(timespec(tv_sec: 951_782_400 + 86_399, tv_nsec: 7_000_000)) == "2000-02-29T23:59:59.007Z")
        // The clock's reading agrees with Foundation's formatter to the second.
        let formatter = ISO8601DateFormatter()
        let before = formatter.string(from: Date()).prefix(16)
        let now = MayflyLogHandler.timestamp()
        #expect(now.count == 24 && now.hasSuffix("Z"))
        #expect(now.hasPrefix(before) || now.prefix(16) > before, "\(now) vs \(before)")
    }
}
