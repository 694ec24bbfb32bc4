import Foundation
import Logging
import MayflyCore
import MayflyGuest
import MayflyTestSupport
import MayflyVM
import Testing

@testable import MayflyAgent

/// A configuration for test jobs: TCG, no grace period, the given work directory.
func jobConfiguration(_ directory: URL, timeout: Duration = .seconds(600)) -> Configuration {
    var configuration = Configuration(name: "test-runner")
    configuration.workDirectory = directory.path
    configuration.vm.accelerator = .tcg
    configuration.vm.gracePeriod = .zero
    configuration.vm.bootTimeout = .seconds(90)
    configuration.job.timeout = timeout
    return configuration
}

func anyQEMU(under directory: URL) -> Bool { qemuRunning(matching: directory.path) }

func expectNothingLeft(_ directory: URL, sourceLocation: SourceLocation = #_sourceLocation) async {
    let clones = (try? FileManager.default.contentsOfDirectory(atPath: directory.appendingPathComponent("clones").path)) ?? []
    #expect(clones.isEmpty, "clones left: \(clones)", sourceLocation: sourceLocation)
    #expect(
        await eventually(timeout: .seconds(5)) { !anyQEMU(under: directory) }, "a QEMU is left", sourceLocation: sourceLocation)
}

/// Jobs in real guests. One guest is shared by the script-level checks; the pipeline checks
/// each boot their own, one at a time.
@Suite("Jobs in a real guest", .serialized)
struct JobEndToEndTests {
    @Test("one shared guest: quoting of every kind of value, exit statuses, stdin isolation, merged output, file variables")
    func scriptsInOneGuest() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let bundle = try BundleDirectory(path: try TestBundle.tinyPath())
                let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
                var options = VMOptions()
                options.accelerator = .tcg
                options.gracePeriod = .zero
                let launcher = VMLauncher(
                    workDirectory: directory.path, options: options, logger: logger,
                    runtimeBase: directory.appendingPathComponent("run").path)
                try await launcher.withVM(bundle: bundle, server: "local", job: "shared", lifetime: .seconds(600)) { vm in
                    let runner = ScriptRunner(endpoint: vm.ssh, logger: logger)
                    func run(_ lines: [String], _ variables: [JobVariable] = []) async throws -> (ScriptRunner.Outcome, String) {
                        let collected = CollectingSink()
                        var script = GuestScript(lines: lines, variables: variables, workingDirectory: "/builds/job")
                        script.echoLines = false
                        let outcome = try await runner.run(script, timeout: .seconds(60)) { await collected.write($0) }
                        return (outcome, await collected.text)
                    }

                    let tricky = [
                        "it's a \"quoted\" value", "line one\nline two\n", "$HOME and ${PATH} and $(id) and `id`",
                        "back\\slash \\n",
                        "unicode: héllo wörld ✓ 日本語 🚀", "", "  leading and trailing  ", "a;b|c&d>e<f*g?h[i]~",
                    ]
                    let variables = tricky.enumerated().map { JobVariable(name: "V\($0.offset)", value: $0.element) }
                    let printing = variables.map { "printf '<%s>' \"$\($0.name)\"" }
                    let (outcome, text) = try await run(printing, variables)
                    #expect(outcome == .exited(0))
                    #expect(text == tricky.map { "<\($0)>" }.joined(), "every value arrives byte for byte")

                    #expect(try await run(["exit 42"]).0 == .exited(42))
                    #expect(
                        try await run(["false", "echo not reached"]) == (.exited(1), ""),
                        "the first failing line stops the script")
                    #expect(try await run(["exit 255"]).0 == .exited(255), "the script's own 255 is not a lost connection")
                    #expect(try await run(["pwd"]) == (.exited(0), "/builds/job\n"))
                    let (_, stdin) = try await run(["cat; echo after-cat"])
                    #expect(stdin == "after-cat\n", "a command reading stdin gets EOF, not the rest of the script")
                    let (_, merged) = try await run(["echo out1; echo err1 >&2; echo out2; echo err2 >&2"])
                    #expect(merged == "out1\nerr1\nout2\nerr2\n", "stdout and stderr in one log, in order")
                    let (_, file) = try await run(
                        ["cat \"$CFG\"; test -f \"$CFG\" && echo exists"], [JobVariable(name: "CFG", value: "k: v", file: true)])
                    #expect(file == "k: vexists\n")
                    let (timedOut, _) = try await (
                        runner.run(GuestScript(lines: ["sleep 30"], variables: [], workingDirectory: "/"), timeout: .seconds(1)) {
                            _ in
                        }, ""
                    )
                    #expect(timedOut == .timedOut)
                }
                await expectNothingLeft(directory)
            }
        }
    }

    @Test("a successful job: header, masked output, after_script, footer with every phase's time")
    func success() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let runner = JobRunner(
                    configuration: jobConfiguration(directory), logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() },
                    runtimeBase: directory.appendingPathComponent("run").path)
                var job = Job(
                    id: "ok-1", script: ["echo secret is $TOKEN", "echo done"], afterScript: ["echo after $TOKEN"],
                    variables: [JobVariable(name: "TOKEN", value: "glpat-abcdefgh12345", masked: true)])
                job.bundle = try TestBundle.tinyPath()
                let sink = CollectingSink()
                let events = EventRecorder()
                let report = await runner.run(
                    job, server: "local", log: JobLog(sink: sink, maskedValues: job.maskedValues, limit: .mebibytes(10)),
                    events: events.record)
                let log = await sink.text
                #expect(report.outcome == .exited(0), "\(log)")
                #expect(log.hasPrefix("Running with mayfly \(MayflyVersion.current) on test-runner, job ok-1\n"))
                #expect(log.contains("Using bundle tiny, cloned by overlay, accelerator tcg, mayfly \(MayflyVersion.current)"))
                #expect(log.contains("secret is [MASKED]\n") && log.contains("after [MASKED]\n"))
                #expect(!log.contains("glpat-abcdefgh12345"))
                #expect(log.contains("Job succeeded"))
                for phase in ["clone", "grace", "lock", "boot", "connect", "script", "after_script", "cleanup"] {
                    #expect(log.contains("\(phase) "), "the footer times \(phase)")
                    #expect(report.duration(of: JobPhase(rawValue: phase)!) != nil)
                }
                #expect(events.started == ["clone", "grace", "lock", "boot", "connect", "script", "after_script", "cleanup"])
                await expectNothingLeft(directory)
            }
        }
    }

    @Test("a failing script: the job fails with its status and after_script still runs")
    func failure() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let runner = JobRunner(
                    configuration: jobConfiguration(directory), logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() },
                    runtimeBase: directory.appendingPathComponent("run").path)
                var job = Job(
                    id: "fail-1", script: ["echo before", "exit 7", "echo never"], afterScript: ["echo after ran; exit 9"])
                job.bundle = try TestBundle.tinyPath()
                let sink = CollectingSink()
                let report = await runner.run(
                    job, server: "local", log: JobLog(sink: sink, maskedValues: [], limit: .mebibytes(10)))
                let log = await sink.text
                #expect(report.outcome == .exited(7))
                #expect(log.contains("before\n") && !log.contains("never\n"))
                #expect(log.contains("after ran\n"))
                #expect(log.contains("after_script failed with exit status 9 (ignored)"))
                #expect(log.contains("ERROR: Job failed: exit status 7"))
                await expectNothingLeft(directory)
            }
        }
    }

    @Test("a job past its timeout is stopped and reported as timed out")
    func timeout() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let runner = JobRunner(
                    configuration: jobConfiguration(directory, timeout: .seconds(60)),
                    logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() },
                    runtimeBase: directory.appendingPathComponent("run").path)
                var job = Job(id: "slow-1", script: ["echo started", "sleep 300"], timeout: .seconds(15))
                job.bundle = try TestBundle.tinyPath()
                let sink = CollectingSink()
                let clock = ContinuousClock()
                let started = clock.now
                let report = await runner.run(
                    job, server: "local", log: JobLog(sink: sink, maskedValues: [], limit: .mebibytes(10)))
                #expect(report.outcome == .timedOut(after: .seconds(15)))
                #expect(clock.now - started < .seconds(25))
                #expect(await sink.text.contains("execution took longer than 15s"))
                await expectNothingLeft(directory)
            }
        }
    }

    @Test("cancelling a running job stops the VM within 2 s and removes the clone")
    func cancellation() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let runner = JobRunner(
                    configuration: jobConfiguration(directory), logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() },
                    runtimeBase: directory.appendingPathComponent("run").path)
                var job = Job(id: "cancel-1", script: ["echo running", "sleep 300"])
                job.bundle = try TestBundle.tinyPath()
                let sink = CollectingSink()
                let task = Task {
                    await runner.run(job, server: "local", log: JobLog(sink: sink, maskedValues: [], limit: .mebibytes(10)))
                }
                #expect(await eventually(timeout: .seconds(60)) { await sink.text.contains("running\n") })
                let clock = ContinuousClock()
                let cancelled = clock.now
                task.cancel()
                let report = await task.value
                let elapsed = clock.now - cancelled
                #expect(report.outcome == .cancelled)
                #expect(elapsed < .seconds(2), "stopped in \(elapsed)")
                await expectNothingLeft(directory)
            }
        }
    }
}

final class EventRecorder: @unchecked Sendable {
    private let lock = NSLock()
    private var names: [String] = []
    var started: [String] { lock.withLock { names } }
    var record: @Sendable (JobEvent) -> Void {
        { [self] event in
            if case .started(let phase) = event { lock.withLock { names.append(phase.rawValue) } }
        }
    }
}
