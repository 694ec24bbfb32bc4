import Foundation
import Logging
import MayflyCore
import MayflyGuest
import MayflyVM

/// Timing helpers: every figure is a median over repeats with its spread, and every Mayfly figure
/// is printed next to a baseline measured in the same run on the same machine.
struct Sample: CustomStringConvertible {
    let values: [Double]

    var median: Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return .nan }
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }
    var min: Double { values.min() ?? .nan }
    var max: Double { values.max() ?? .nan }

    var description: String {
        String(format: "median %.3f s (min %.3f, max %.3f, n=%d)", median, min, max, values.count)
    }
}

func seconds(_ duration: Duration) -> Double { duration.secondsDouble }

/// Runs `body` `count` times and returns the wall times in seconds.
func repeatTimed(_ count: Int, _ body: () async throws -> Void) async rethrows -> Sample {
    var values: [Double] = []
    let clock = ContinuousClock()
    for _ in 0..<count {
        let start = clock.now
        try await body()
        values.append(seconds(clock.now - start))
    }
    return Sample(values: values)
}

/// Runs a shell command to completion; throws with its standard error when it fails.
@discardableResult
func shell(_ command: String, timeout: Duration = .seconds(600)) async throws -> String {
    let output = try await CommandRunner.run("/bin/bash", ["-c", command], timeout: timeout, outputLimit: 1 << 24).check()
    return output.standardOutput
}

/// A child process the benchmark starts and stops (the fake GitLab, `mayfly run`).
final class Child: @unchecked Sendable {
    let process = Process()
    let stdin = Pipe()
    let errorFile: URL

    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], errorFile: URL) throws {
        self.errorFile = errorFile
        _ = FileManager.default.createFile(atPath: errorFile.path, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardInput = stdin
        process.standardOutput = FileHandle.nullDevice
        process.standardError = try FileHandle(forWritingTo: errorFile)
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var errors: String { (try? String(contentsOf: errorFile, encoding: .utf8)) ?? "" }

    func signal(_ number: Int32) { if process.isRunning { kill(process.processIdentifier, number) } }

    func stop() {
        try? stdin.fileHandleForWriting.close()
        signal(SIGTERM)
        let deadline = Date().addingTimeInterval(30)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        signal(SIGKILL)
        process.waitUntilExit()
    }

    /// `VmRSS` or `VmHWM` of the process, in KiB.
    func memory(_ field: String) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") })
        else { return 0 }
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }

    /// User plus system CPU time of the process so far, in seconds.
    func cpuSeconds() -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")")
        else {
            return 0
        }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        let ticks = (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)
        return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}

/// Polls `condition` every `interval` until it holds or `timeout` passes.
func waitFor(timeout: Duration = .seconds(300), interval: Duration = .milliseconds(20), _ condition: () async -> Bool) async
    -> Bool
{
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: interval)
    }
    return false
}

/// Whether a QEMU whose command line mentions `path` is running.
func qemuRunning(under path: String) -> Bool {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).contains { name in
        guard let pid = Int32(name), let line = ProcessIdentity.commandLine(of: pid) else { return false }
        return line.contains("qemu-system") && line.contains(path) && !ProcessIdentity.isZombie(pid)
    }
}

struct BenchFailure: Error, CustomStringConvertible {
    let description: String
}
