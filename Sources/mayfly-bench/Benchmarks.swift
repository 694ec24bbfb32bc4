import Foundation
import Logging
import MayflyCore
import MayflyGuest
import MayflyHTTP
import MayflyVM

/// The settings every benchmark shares.
struct BenchContext {
    let root: URL  // the repository
    let work: URL  // scratch, on the repository's filesystem
    let mayfly: String
    let bundle: String
    let repeats: Int
    let logger = Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() }

    var fakeGitLab: String { root.appendingPathComponent("Tests/MayflyTestSupport/Resources/fake_gitlab.py").path }
}

// MARK: 1. Clone

func benchClone(_ context: BenchContext) async throws {
    print("## 1. Clone: a sparse golden disk, each strategy that works here, against cp --sparse=always")
    let directory = context.work.appendingPathComponent("clone")
    try? FileManager.default.removeItem(at: directory)
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let tiny = try BundleDirectory(path: context.bundle)
    let capabilities = CloneCapabilities.probe(directory: directory.path)
    print("reflink: \(capabilities.reflink ? "works" : capabilities.reflinkReason)")
    print("| size | cp --sparse=always | overlay | overlay / cp | copy (Mayfly) | copy / cp |")
    print("| --- | --- | --- | --- | --- | --- |")
    for gib in [1, 4, 10] {
        // A golden disk of `gib` GiB, a quarter of it data (random, so nothing is a hole) in 8
        // stretches, the rest holes: like an installed image with free space.
        let bundlePath = directory.appendingPathComponent("golden-\(gib)")
        try FileManager.default.createDirectory(at: bundlePath, withIntermediateDirectories: true)
        let disk = bundlePath.appendingPathComponent("disk.raw").path
        try await shell(
            "truncate -s \(gib)G \(disk) && for i in $(seq 0 7); do dd if=/dev/urandom of=\(disk) bs=1M count=\(gib * 32) seek=$((i * \(gib) * 128)) conv=notrunc status=none; done"
        )
        for file in ["vmlinux", "ssh/id_ed25519"] {
            let path = bundlePath.appendingPathComponent(file)
            try FileManager.default.createDirectory(at: path.deletingLastPathComponent(), withIntermediateDirectories: true)
            _ = FileManager.default.createFile(atPath: path.path, contents: Data("x".utf8))
        }
        try """
        format: 1
        boot: { mode: kernel, kernel: vmlinux }
        disk: { file: disk.raw, format: raw }
        guest: { ssh_key: ssh/id_ed25519, provision: none }
        """.write(to: bundlePath.appendingPathComponent("bundle.yaml"), atomically: true, encoding: .utf8)
        let bundle = try BundleDirectory(path: bundlePath.path)
        // Caches are dropped before every run (root only), so that each copy reads from the disk.
        let dropCaches = "sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true"
        try await shell(dropCaches)
        let copyTarget = directory.appendingPathComponent("cp-target").path
        var cpValues: [Double] = []
        for _ in 0..<context.repeats {
            try await shell(dropCaches)
            cpValues.append(try await repeatTimed(1) { try await shell("cp --sparse=always \(disk) \(copyTarget)") }.median)
            try await shell("rm -f \(copyTarget)")
        }
        let cp = Sample(values: cpValues)
        var results: [CloneStrategyChoice: Sample] = [:]
        for strategy in [CloneStrategyChoice.overlay, .copy] {
            let cloner = Cloner(
                workDirectory: directory.appendingPathComponent("work").path, strategy: strategy,
                runtimeBase: directory.appendingPathComponent("run").path, logger: context.logger)
            var values: [Double] = []
            for index in 0..<context.repeats {
                // A copy reads the data: from the disk, like cp. An overlay reads none of it.
                if strategy == .copy { try await shell(dropCaches) }
                let made = try await cloner.makeClone(
                    bundle: bundle, server: "bench", job: "\(strategy)-\(gib)-\(index)", lifetime: .seconds(60))
                values.append(seconds(made.duration))
                cloner.remove(made.clone)
            }
            results[strategy] = Sample(values: values)
        }
        let overlay = results[.overlay]!
        let copy = results[.copy]!
        print(
            String(
                format: "| %d GiB | %.3f s | %.4f s | 1/%.0f | %.3f s | %.2f× |", gib, cp.median, overlay.median,
                cp.median / overlay.median,
                copy.median, copy.median / cp.median))
        try? FileManager.default.removeItem(at: bundlePath)
    }
    _ = tiny
    try? FileManager.default.removeItem(at: directory)
}

// MARK: 2. Overhead

func benchOverhead(_ context: BenchContext) async throws {
    print("\n## 2. Overhead: mayfly exec of a trivial job against the same steps by hand (grace period 0)")
    let directory = context.work.appendingPathComponent("overhead")
    try? FileManager.default.removeItem(at: directory)
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let config = directory.appendingPathComponent("mayfly.yaml")
    try "work_dir: \(directory.path)/work\nvm: { accelerator: tcg, grace_period: 0 }\n".write(
        to: config, atomically: true, encoding: .utf8)
    let job = directory.appendingPathComponent("true.yml")
    try "script: [ 'true' ]\n".write(to: job, atomically: true, encoding: .utf8)
    let bundle = try BundleDirectory(path: context.bundle)
    let script = """
        set -e
        d=$(mktemp -d \(directory.path)/hand-XXXX)
        qemu-img create -q -f qcow2 -b \(bundle.diskPath) -F qcow2 $d/disk.qcow2
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot -accel tcg -cpu max -smp 1 -m 256M \\
          -kernel \(bundle.kernelPath!) -initrd \(bundle.initrdPath!) -append '\(bundle.manifest.boot.cmdline)' \\
          -drive file=$d/disk.qcow2,if=none,id=d0,format=qcow2 -device virtio-blk-pci,drive=d0 \\
          -netdev user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22 -device virtio-net-pci,netdev=n0 -serial file:$d/serial.log &
        qemu=$!
        until ssh -F /dev/null -i \(bundle.sshKeyPath ?? "") -p $port -o BatchMode=yes -o StrictHostKeyChecking=no \\
              -o UserKnownHostsFile=/dev/null -o ConnectTimeout=2 -o LogLevel=ERROR root@127.0.0.1 true 2>/dev/null; do sleep 0.1; done
        kill $qemu; wait $qemu || true
        rm -rf $d
        """
    try script.write(to: directory.appendingPathComponent("by-hand.sh"), atomically: true, encoding: .utf8)
    var timings: [String] = []
    let mayfly = try await repeatTimed(context.repeats) {
        let output = try await shell(
            "\(context.mayfly) exec --config \(config.path) \(job.path) --bundle \(context.bundle) 2>/dev/null")
        if let line = output.split(separator: "\n").last(where: { $0.hasPrefix("Timings:") }) { timings.append(String(line)) }
    }
    let byHand = try await repeatTimed(context.repeats) { try await shell("bash \(directory.path)/by-hand.sh") }
    print("| | wall time |")
    print("| --- | --- |")
    print("| by hand (qemu-img overlay, qemu, ssh true until it works, kill, rm) | \(byHand) |")
    print("| mayfly exec | \(mayfly) |")
    print(String(format: "ratio mayfly / by hand: %.3f", mayfly.median / byHand.median))
    if let last = timings.last { print("Mayfly's phases (last run): \(last.dropFirst("Timings: ".count))") }
    try? FileManager.default.removeItem(at: directory)
}
