import Foundation
import Logging
import MayflyCore
import MayflyGuest
import MayflyHTTP
import MayflyVM

/// The fake GitLab from the test suite, started for a benchmark.
final class BenchGitLab: @unchecked Sendable {
    let child: Child
    let url: String
    let http = HTTPClient(logger: Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() })

    init(_ context: BenchContext, directory: URL) async throws {
        let portFile = directory.appendingPathComponent("port").path
        try? FileManager.default.removeItem(atPath: portFile)
        child = try Child(
            "/usr/bin/env", ["python3", context.fakeGitLab, "--port-file", portFile],
            errorFile: directory.appendingPathComponent("gitlab.err"))
        guard await waitFor(timeout: .seconds(20), { FileManager.default.fileExists(atPath: portFile) }),
            let port = Int((try? String(contentsOfFile: portFile, encoding: .utf8)) ?? "")
        else { throw BenchFailure(description: "the fake GitLab did not start: \(child.errors)") }
        url = "http://127.0.0.1:\(port)"
    }

    @discardableResult
    func control(_ method: HTTPMethod, _ path: String, _ body: [String: Any]? = nil) async throws -> Any {
        let bytes = try body.map { Array(try JSONSerialization.data(withJSONObject: $0)) }
        let response = try await http.execute(
            HTTPRequest(method: method, url: url + "/__control/" + path, body: bytes.map { .bytes($0) }))
        return try JSONSerialization.jsonObject(with: Data(response.body))
    }

    func enqueue(_ script: [String]) async throws -> Int {
        let answer = try await control(
            .post, "jobs", ["script": script, "variables": [["key": "GIT_STRATEGY", "value": "none"]]])
        return (answer as? [String: Any])?["id"] as? Int ?? 0
    }

    func job(_ id: Int) async throws -> [String: Any] { (try await control(.get, "jobs/\(id)") as? [String: Any]) ?? [:] }

    func stop() {
        http.shutdown()
        child.stop()
    }
}

/// `mayfly run` against the fake GitLab, with the given extra configuration.
func startRunner(_ context: BenchContext, directory: URL, server: BenchGitLab, extra: String = "") throws -> Child {
    let token = directory.appendingPathComponent("token")
    try "glrt-test-runner-token\n".write(to: token, atomically: true, encoding: .utf8)
    chmod(token.path, 0o600)
    let config = directory.appendingPathComponent("mayfly.yaml")
    try """
    work_dir: \(directory.path)/work
    log_level: warning
    vm: { bundle: \(context.bundle), accelerator: tcg, grace_period: 0 }
    job: { log_limit: 400MiB }
    servers:
      - name: fake
        url: \(server.url)
        token_file: token
        poll_interval: 3s
    \(extra)
    """.write(to: config, atomically: true, encoding: .utf8)
    return try Child(context.mayfly, ["run", "--config", config.path], errorFile: directory.appendingPathComponent("runner.err"))
}

/// A guest booted in this process, for the SSH baselines.
func withBaselineGuest<T: Sendable>(_ context: BenchContext, _ body: (SSHEndpoint) async throws -> T) async throws -> T {
    var options = VMOptions()
    options.accelerator = .tcg
    options.gracePeriod = .zero
    let directory = context.work.appendingPathComponent("baseline-guest")
    let launcher = VMLauncher(
        workDirectory: directory.path, options: options, logger: context.logger,
        runtimeBase: directory.appendingPathComponent("run").path)
    return try await launcher.withVM(
        bundle: try BundleDirectory(path: context.bundle), server: "bench", job: "baseline", lifetime: .seconds(3600)
    ) {
        vm in
        _ = try await GuestConnection.waitUntilReady(vm.ssh, timeout: .seconds(60))
        return try await body(vm.ssh)
    }
}

// MARK: 3. Pickup

func benchPickup(_ context: BenchContext) async throws {
    print("\n## 3. Pickup: job queued on the server → first log byte at the server")
    let directory = context.work.appendingPathComponent("pickup")
    try? FileManager.default.removeItem(at: directory)
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let sshRoundTrip = try await withBaselineGuest(context) { endpoint in
        try await repeatTimed(max(5, context.repeats)) { _ = try await SSHCommand(endpoint: endpoint).run("true") }
    }
    print("baseline: one SSH exec round trip (`ssh guest true`) to a running guest: \(sshRoundTrip)")
    for (name, extra) in [("cold (clone + boot)", ""), ("warm pool, booted", "warm_pool: { size: 1, max_age: 1h, boot: true }")] {
        let server = try await BenchGitLab(context, directory: directory)
        try await server.control(.post, "scenario", ["trace_update_interval": 3, "long_poll": 50])
        let runner = try startRunner(context, directory: directory, server: server, extra: extra)
        var values: [Double] = []
        var headerValues: [Double] = []
        if !extra.isEmpty {
            _ = await waitFor(timeout: .seconds(120)) {
                runner.errors.contains("guest is up") || qemuRunning(under: directory.path)
            }
        }
        for _ in 0..<context.repeats {
            if !extra.isEmpty {
                // Wait for the pool to hold a booted guest again.
                try await Task.sleep(for: .seconds(12))
            }
            let clock = ContinuousClock()
            let queued = clock.now
            let id = try await server.enqueue(["echo first-output"])
            _ = await waitFor(timeout: .seconds(300), interval: .milliseconds(10)) {
                ((try? await server.job(id))?["trace_bytes"] as? Int ?? 0) > 0
            }
            headerValues.append(seconds(clock.now - queued))
            _ = await waitFor(timeout: .seconds(300), interval: .milliseconds(10)) {
                ((try? await server.job(id))?["trace"] as? String ?? "").contains("\nfirst-output")
            }
            values.append(seconds(clock.now - queued))
            _ = await waitFor(timeout: .seconds(120)) {
                ["success", "failed"].contains((try? await server.job(id))?["state"] as? String ?? "")
            }
        }
        runner.stop()
        server.stop()
        let sample = Sample(values: values)
        print("\(name): first byte (the log's header): \(Sample(values: headerValues))")
        print(
            "\(name): first byte of the script's output: \(sample); / SSH round trip: \(String(format: "%.1f", sample.median / sshRoundTrip.median))×"
        )
    }
    try? FileManager.default.removeItem(at: directory)
}

// MARK: 4. Log throughput

func benchThroughput(_ context: BenchContext, mebibytes: Int) async throws {
    print("\n## 4. Log throughput: a job writing \(mebibytes) MiB to stdout, bytes per second received by the server")
    let directory = context.work.appendingPathComponent("throughput")
    try? FileManager.default.removeItem(at: directory)
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let raw = try await withBaselineGuest(context) { endpoint in
        try await repeatTimed(1) {
            let command = SSHCommand(endpoint: endpoint).arguments(
                remoteCommand: "dd if=/dev/zero bs=1M count=\(mebibytes) 2>/dev/null"
            )
            .map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
            try await shell("ssh \(command) > /dev/null")
        }
    }
    let rawRate = Double(mebibytes) / raw.median
    print(String(format: "baseline: ssh guest 'dd … count=%d' > /dev/null: %.2f MiB/s (%@)", mebibytes, rawRate, raw.description))
    let server = try await BenchGitLab(context, directory: directory)
    try await server.control(
        .post, "scenario", ["trace_update_interval": 3, "max_trace_bytes": (mebibytes + 16) << 20, "live_trace": false])
    let runner = try startRunner(context, directory: directory, server: server)
    let id = try await server.enqueue(["dd if=/dev/zero bs=1M count=\(mebibytes) 2>/dev/null"])
    // Only the cheap views while the job runs (the job's own view carries its whole log).
    var peak = 0
    var finished = false
    while !finished {
        peak = max(peak, runner.memory("VmHWM"))
        let jobs = (try await server.control(.get, "jobs") as? [[String: Any]]) ?? []
        finished = jobs.contains { ($0["id"] as? Int) == id && ["success", "failed"].contains($0["state"] as? String ?? "") }
        if !finished { try await Task.sleep(for: .milliseconds(500)) }
    }
    peak = max(peak, runner.memory("VmHWM"))
    let patches = (try await server.control(.get, "requests?path_prefix=/api/v4/jobs/\(id)/trace") as? [[String: Any]]) ?? []
    let accepted = patches.filter { ($0["status"] as? Int) == 202 }
    let bytes = accepted.reduce(0) { $0 + ($1["body_length"] as? Int ?? 0) }
    let times = accepted.compactMap { $0["time"] as? Double }
    let elapsed = (times.max() ?? 0) - (times.min() ?? 0)
    let rate = Double(bytes) / 1_048_576 / max(elapsed, 0.001)
    print(
        String(
            format:
                "mayfly run: %.2f MiB/s at the server (%d bytes in %d patches over %.1f s); / raw SSH: %.2f×; agent peak RSS %.1f MiB",
            rate, bytes, accepted.count, elapsed, rate / rawRate, Double(peak) / 1024))
    runner.stop()
    server.stop()
    try? FileManager.default.removeItem(at: directory)
}

// MARK: 5. Idle

func benchIdle(_ context: BenchContext, seconds duration: Int) async throws {
    print("\n## 5. Idle: the agent's memory and CPU over \(duration) s of long polling with no jobs")
    let directory = context.work.appendingPathComponent("idle")
    try? FileManager.default.removeItem(at: directory)
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let server = try await BenchGitLab(context, directory: directory)
    try await server.control(.post, "scenario", ["long_poll": 50])
    let runner = try startRunner(context, directory: directory, server: server)
    try await Task.sleep(for: .seconds(3))
    let cpuStart = runner.cpuSeconds()
    // RSS once a second over the whole period: the poll cycles and the agent's own
    // maintenance (every 60 s) happen inside it.
    var samples: [Double] = []
    let clock = ContinuousClock()
    let end = clock.now + .seconds(duration)
    while clock.now < end {
        samples.append(Double(runner.memory("VmRSS")) / 1024)
        try await Task.sleep(for: .seconds(1))
    }
    let cpu = runner.cpuSeconds() - cpuStart
    let rss = Sample(values: samples)
    print(
        String(
            format:
                "RSS median %.1f MiB (min %.1f, max %.1f, n=%d; at the end %.1f MiB: anonymous %.1f, file pages %.1f); peak %.1f MiB",
            rss.median, rss.min, rss.max, samples.count, Double(runner.memory("VmRSS")) / 1024,
            Double(runner.memory("RssAnon")) / 1024, Double(runner.memory("RssFile")) / 1024,
            Double(runner.memory("VmHWM")) / 1024))
    print(String(format: "CPU %.2f s over %d s (%.3f%% of one core)", cpu, duration, cpu / Double(duration) * 100))
    runner.stop()
    server.stop()
    try? FileManager.default.removeItem(at: directory)
}

// MARK: 6. Cancel

func benchCancel(_ context: BenchContext) async throws {
    print("\n## 6. Cancel: server-side cancel → QEMU gone")
    let directory = context.work.appendingPathComponent("cancel")
    try? FileManager.default.removeItem(at: directory)
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    for interval in [3, 60] {
        let server = try await BenchGitLab(context, directory: directory)
        try await server.control(.post, "scenario", ["trace_update_interval": interval])
        let runner = try startRunner(context, directory: directory, server: server)
        var values: [Double] = []
        for _ in 0..<context.repeats {
            let id = try await server.enqueue(["echo started", "sleep 600"])
            _ = await waitFor(timeout: .seconds(300), interval: .milliseconds(50)) {
                ((try? await server.job(id))?["trace"] as? String ?? "").contains("started")
            }
            // The first trace answer set the interval; wait a little so that the cancel lands mid-interval.
            try await Task.sleep(for: .milliseconds(500))
            let clock = ContinuousClock()
            let cancelled = clock.now
            try await server.control(.post, "jobs/\(id)/cancel", ["mode": "canceled"])
            _ = await waitFor(timeout: .seconds(300), interval: .milliseconds(10)) { !qemuRunning(under: directory.path) }
            values.append(seconds(clock.now - cancelled))
        }
        runner.stop()
        server.stop()
        print(
            "update interval \(interval) s (\(interval == 3 ? "GitLab while the log is watched" : "GitLab's default")): \(Sample(values: values))"
        )
    }
    try? FileManager.default.removeItem(at: directory)
}
