import Foundation
import MayflyTestSupport
import Testing

/// Starts the built `mayfly` with its output going to files, for tests that watch it run.
final class MayflyProcess: @unchecked Sendable {
    let process = Process()
    let stdout: URL
    let stderr: URL

    init(_ arguments: [String], in directory: URL) throws {
        stdout = directory.appendingPathComponent("stdout")
        stderr = directory.appendingPathComponent("stderr")
        FileManager.default.createFile(atPath: stdout.path, contents: nil)
        FileManager.default.createFile(atPath: stderr.path, contents: nil)
        process.executableURL = repositoryRoot.appendingPathComponent(".build/debug/mayfly")
        process.arguments = arguments
        process.standardOutput = try FileHandle(forWritingTo: stdout)
        process.standardError = try FileHandle(forWritingTo: stderr)
        try process.run()
    }

    var output: String { (try? String(contentsOf: stdout, encoding: .utf8)) ?? "" }
    var errors: String { (try? String(contentsOf: stderr, encoding: .utf8)) ?? "" }

    /// Waits for the exit, sampling the peak resident memory (VmHWM) while it runs.
    func waitSamplingMemory() async -> (status: Int32, peakKiB: Int) {
        var peak = 0
        while process.isRunning {
            if let status = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8),
                let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
                let value = Int(line.split(separator: " ").dropFirst().first ?? "")
            {
                peak = max(peak, value)
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
        process.waitUntilExit()
        return (process.terminationStatus, peak)
    }
}

func execConfig(_ directory: URL, vm: String = "{ accelerator: tcg, grace_period: 0 }", extra: String = "") throws -> String {
    let path = directory.appendingPathComponent("mayfly.yaml").path
    try "work_dir: \(directory.path)/work\nvm: \(vm)\n\(extra)".write(
        toFile: path, atomically: true, encoding: .utf8)
    return path
}

@Suite("mayfly exec", .serialized)
struct ExecCommandTests {
    @Test("the hello example: exit 0, masked secret, phases on standard error, nothing left behind")
    func hello() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let run = try MayflyProcess(
                    [
                        "exec", "--config", try execConfig(directory),
                        repositoryRoot.appendingPathComponent("config/examples/hello.yml").path,
                        "--bundle", try TestBundle.tinyPath(),
                    ], in: directory)
                let (status, _) = await run.waitSamplingMemory()
                #expect(status == 0, "\(run.errors)")
                #expect(run.output.contains("Hello from mayfly"))
                #expect(run.output.contains("the secret is [MASKED]"))
                #expect(!run.output.contains("s3cr3t-demo-value") && !run.errors.contains("s3cr3t-demo-value"))
                #expect(run.output.contains("after_script runs"))
                for phase in ["clone", "grace", "lock", "boot", "connect", "script", "after_script", "cleanup"] {
                    #expect(run.errors.contains("mayfly: \(phase) "), "phase \(phase) is shown")
                }
                await expectNothingLeft(directory.appendingPathComponent("work"))
            }
        }
    }

    @Test("failing and timed-out jobs exit with the script's status and 124")
    func statuses() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let failing = try MayflyProcess(
                    [
                        "exec", "--config", try execConfig(directory),
                        repositoryRoot.appendingPathComponent("config/examples/failing.yml").path,
                        "--bundle", try TestBundle.tinyPath(),
                    ], in: directory)
                #expect(await failing.waitSamplingMemory().status == 3)
                #expect(failing.output.contains("cleaning up after the failure"))
                let job = directory.appendingPathComponent("slow.yml")
                try "script: [ 'sleep 300' ]\ntimeout: 12s\n".write(to: job, atomically: true, encoding: .utf8)
                let slow = try MayflyProcess(
                    ["exec", "--config", try execConfig(directory), job.path, "--bundle", try TestBundle.tinyPath()],
                    in: directory.appendingPathComponent("work").creatingDirectory())
                #expect(await slow.waitSamplingMemory().status == 124)
                await expectNothingLeft(directory.appendingPathComponent("work"))
            }
        }
    }

    @Test("Ctrl-C (SIGINT) stops the VM, cleans up and exits 130")
    func interrupt() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let job = directory.appendingPathComponent("long.yml")
                try "script: [ 'echo started', 'sleep 300' ]\n".write(to: job, atomically: true, encoding: .utf8)
                let run = try MayflyProcess(
                    ["exec", "--config", try execConfig(directory), job.path, "--bundle", try TestBundle.tinyPath()],
                    in: directory)
                #expect(await eventually(timeout: .seconds(60)) { run.output.contains("started\n") })
                let clock = ContinuousClock()
                let interrupted = clock.now
                kill(run.process.processIdentifier, SIGINT)
                let (status, _) = await run.waitSamplingMemory()
                #expect(status == 130)
                #expect(clock.now - interrupted < .seconds(3))
                #expect(run.errors.contains("interrupted"))
                await expectNothingLeft(directory.appendingPathComponent("work"))
            }
        }
    }

    @Test("100 MiB of output arrives complete while the agent's memory stays bounded")
    func largeOutput() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let run = try MayflyProcess(
                    [
                        "exec", "--config", try execConfig(directory, extra: "job: { log_limit: 200MiB }\n"),
                        repositoryRoot.appendingPathComponent("config/examples/long-output.yml").path, "--bundle",
                        try TestBundle.tinyPath(),
                    ],
                    in: directory)
                let (status, peakKiB) = await run.waitSamplingMemory()
                #expect(status == 0, "\(run.errors)")
                // Count the job's bytes without loading the file: 'x' × 100 MiB between Mayfly's lines.
                let handle = try FileHandle(forReadingFrom: run.stdout)
                var xs = 0
                var other = 0
                while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
                    let count = chunk.reduce(into: 0) { $0 += $1 == UInt8(ascii: "x") ? 1 : 0 }
                    xs += count
                    other += chunk.count - count
                }
                try handle.close()
                #expect(xs >= 100 << 20, "all 104857600 bytes arrived (plus the x's in Mayfly's own lines)")
                #expect(xs < (100 << 20) + 200)
                #expect(other < 4096)
                #expect(peakKiB > 0 && peakKiB < 96 * 1024, "peak RSS \(peakKiB) KiB for 100 MiB of output")
                await expectNothingLeft(directory.appendingPathComponent("work"))
            }
        }
    }
}

extension URL {
    func creatingDirectory() throws -> URL {
        try FileManager.default.createDirectory(at: self, withIntermediateDirectories: true)
        return self
    }
}
