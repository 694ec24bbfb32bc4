import Foundation
import Logging
import MayflyCore
import MayflyHTTP
import MayflyTestSupport
import Testing

/// `mayfly run` as a real process against the fake GitLab over HTTPS with a client certificate,
/// running real jobs in the tiny guest.
@Suite("mayfly run against a GitLab server", .serialized)
struct RunDaemonTests {
    func writeConfig(_ directory: URL, server: FakeGitLab) throws -> String {
        let pki = try TestPKI.shared()
        let token = directory.appendingPathComponent("gitlab.token")
        try (FakeGitLab.runnerToken + "\n").write(to: token, atomically: true, encoding: .utf8)
        chmod(token.path, 0o600)
        let config = directory.appendingPathComponent("mayfly.yaml")
        try """
        name: test-runner
        work_dir: \(directory.path)/work
        concurrency: 1
        shutdown_timeout: 1m
        vm: { bundle: \(try TestBundle.tinyPath()), accelerator: tcg, grace_period: 0 }
        servers:
          - name: fake
            url: \(server.url)
            token_file: gitlab.token
            poll_interval: 500ms
            tls: { ca_file: \(pki.caCertificate), cert_file: \(pki.clientCertificate), key_file: \(pki.clientKey) }
        """.write(to: config, atomically: true, encoding: .utf8)
        return config.path
    }

    @Test(
        "jobs succeed and fail with their logs and checksums; graceful cancel runs after_script; a hard cancel stops the VM; SIGTERM stops an idle runner at once"
    )
    func daemon() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let server = try await FakeGitLab(tls: true, clientCertificates: true)
                try await server.scenario(["trace_update_interval": 1, "long_poll": 20])
                let run = try MayflyProcess(["run", "--config", try writeConfig(directory, server: server)], in: directory)
                let work = directory.appendingPathComponent("work")
                defer { if run.process.isRunning { kill(run.process.processIdentifier, SIGKILL) } }

                // 1. A job that succeeds, with a masked variable and after_script.
                let (ok, _) = try await server.enqueue([
                    "script": ["echo the password is $PASSWORD", "uname -m"], "after_script": ["echo after"],
                    "variables": [
                        ["key": "GIT_STRATEGY", "value": "none"], ["key": "PASSWORD", "value": "pa55word-XYZ", "masked": true],
                    ],
                ])
                let okView = try await server.waitForJob(ok, states: ["success", "failed"])
                let okTrace = okView["trace"] as? String ?? ""
                #expect(okView["state"] as? String == "success", "\(okTrace)\n\(run.errors)")
                #expect(okTrace.contains("Running with mayfly"))
                #expect(okTrace.contains("the password is [MASKED]") && !okTrace.contains("pa55word-XYZ"))
                #expect(okTrace.contains("x86_64") && okTrace.contains("after\n"))
                #expect((okView["final_update"] as? [String: Any])?["checksum_ok"] as? Bool == true)
                #expect((okView["final_update"] as? [String: Any])?["bytesize_ok"] as? Bool == true)

                // 2. A failing job: script_failure with its exit code.
                let (failing, _) = try await server.enqueue([
                    "script": ["exit 4"], "variables": [["key": "GIT_STRATEGY", "value": "none"]],
                ])
                let failView = try await server.waitForJob(failing, states: ["success", "failed"])
                #expect(failView["state"] as? String == "failed")
                #expect(failView["failure_reason"] as? String == "script_failure")
                #expect(failView["exit_code"] as? Int == 4)

                // 3. Graceful cancel: the script stops, after_script runs, the job ends canceled.
                let (graceful, _) = try await server.enqueue([
                    "script": ["echo started", "sleep 300"], "after_script": ["echo after the cancel"],
                    "variables": [["key": "GIT_STRATEGY", "value": "none"]],
                ])
                _ = try await waitForTrace(server, graceful, containing: "started")
                try await server.cancel(graceful, mode: "canceling")
                let gracefulView = try await server.waitForJob(
                    graceful, states: ["canceled", "failed", "success"], timeout: .seconds(60))
                #expect(gracefulView["state"] as? String == "canceled")
                #expect((gracefulView["trace"] as? String)?.contains("after the cancel") == true)

                // 4. Hard cancel: the next trace answer aborts the job; QEMU goes within seconds.
                let (hard, _) = try await server.enqueue([
                    "script": ["echo started", "sleep 300"], "variables": [["key": "GIT_STRATEGY", "value": "none"]],
                ])
                _ = try await waitForTrace(server, hard, containing: "started")
                let clock = ContinuousClock()
                let cancelled = clock.now
                try await server.cancel(hard, mode: "canceled")
                #expect(await eventually(timeout: .seconds(10)) { !anyQEMU(under: work) })
                let stopped = clock.now - cancelled
                #expect(stopped < .seconds(5), "QEMU gone \(stopped) after the cancel")
                print("measured: hard cancel to QEMU gone: \(stopped)")
                try await Task.sleep(for: .seconds(2))
                let after = try await server.requests(pathPrefix: "/api/v4/jobs/\(hard)")
                let afterCancel = after.filter { ($0["status"] as? Int) == 403 }
                #expect(afterCancel.count <= 1, "after the 403 nothing more is sent for the job")

                // 5. SIGTERM while idle (a long poll is open): the runner stops at once.
                try await Task.sleep(for: .seconds(1))
                let signalled = clock.now
                kill(run.process.processIdentifier, SIGTERM)
                let (status, _) = await run.waitSamplingMemory()
                #expect(status == 0, "\(run.errors)")
                #expect(clock.now - signalled < .seconds(5))
                print("measured: SIGTERM while idle to exit: \(clock.now - signalled)")
                await expectNothingLeft(work)
                server.stop()
            }
        }
    }

    @Test(
        "kill -9 of the agent mid-job: the next start kills nothing twice, removes the clone and fails the job with its whole log"
    )
    func killedAgentMidJob() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let server = try await FakeGitLab()
                try await server.scenario(["trace_update_interval": 1])
                let config = try writeConfig(directory, server: server)
                let work = directory.appendingPathComponent("work")
                let first = try MayflyProcess(
                    ["run", "--config", config], in: directory.appendingPathComponent("first").creatingDirectory())
                let (id, _) = try await server.enqueue([
                    "script": ["echo begin", "sleep 300"], "variables": [["key": "GIT_STRATEGY", "value": "none"]],
                ])
                _ = try await waitForTrace(server, id, containing: "begin")
                kill(first.process.processIdentifier, SIGKILL)
                _ = await first.waitSamplingMemory()
                // QEMU was started under setpriv --pdeathsig KILL: it dies with the agent.
                #expect(await eventually(timeout: .seconds(10)) { !anyQEMU(under: work) }, "QEMU died with the agent")
                let clones = try FileManager.default.contentsOfDirectory(atPath: work.appendingPathComponent("clones").path)
                #expect(clones.count == 1, "the dead agent's clone is still there before the restart")

                let second = try MayflyProcess(
                    ["run", "--config", config], in: directory.appendingPathComponent("second").creatingDirectory())
                defer { if second.process.isRunning { kill(second.process.processIdentifier, SIGKILL) } }
                let view = try await server.waitForJob(id, states: ["failed", "success"], timeout: .seconds(60))
                #expect(view["state"] as? String == "failed")
                #expect(view["failure_reason"] as? String == "runner_system_failure")
                let trace = view["trace"] as? String ?? ""
                #expect(trace.contains("begin\n"))
                #expect(trace.contains("the runner restarted while this job was running"))
                #expect((view["final_update"] as? [String: Any])?["checksum_ok"] as? Bool == true)
                #expect(
                    await eventually(timeout: .seconds(10)) {
                        ((try? FileManager.default.contentsOfDirectory(atPath: work.appendingPathComponent("clones").path)) ?? [])
                            .isEmpty
                    }, "the restarted agent removed the clone")
                #expect(
                    ((try? FileManager.default.contentsOfDirectory(atPath: work.appendingPathComponent("spool").path)) ?? [])
                        .isEmpty)
                kill(second.process.processIdentifier, SIGTERM)
                #expect(await second.waitSamplingMemory().status == 0)
                server.stop()
            }
        }
    }

    @Test(
        "a job that ends during an outage keeps its result in the spool; after the outage (and an agent restart) the whole log and the real result arrive"
    )
    func outageThenRestart() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let server = try await FakeGitLab()
                try await server.scenario(["trace_update_interval": 1])
                let config = try writeConfig(directory, server: server)
                let work = directory.appendingPathComponent("work")
                let first = try MayflyProcess(
                    ["run", "--config", config], in: directory.appendingPathComponent("first").creatingDirectory())
                let lines = (1...200).map { "line \($0) of a job that outlives the outage" }
                let (id, _) = try await server.enqueue([
                    "script": [
                        "sleep 2", "for i in $(seq 1 200); do echo \"line $i of a job that outlives the outage\"; done",
                        "echo done",
                    ],
                    "variables": [["key": "GIT_STRATEGY", "value": "none"]],
                ])
                _ = try await server.waitForJob(id, states: ["running"])
                // The outage: every trace upload and update now fails at the connection.
                try await server.scenario([
                    "faults": [
                        ["endpoint": "trace", "drop_connection": true, "count": 100_000],
                        ["endpoint": "update", "drop_connection": true, "count": 100_000],
                    ]
                ])
                let spool = work.appendingPathComponent("spool/fake-\(id)/job.json")
                #expect(
                    await eventually(timeout: .seconds(120)) {
                        ((try? String(contentsOf: spool, encoding: .utf8)) ?? "").contains("\"outcome\"")
                    }, "the job ended and its outcome was written to the spool")
                kill(first.process.processIdentifier, SIGKILL)
                _ = await first.waitSamplingMemory()
                try await server.scenario(["clear_faults": true])

                let second = try MayflyProcess(
                    ["run", "--config", config], in: directory.appendingPathComponent("second").creatingDirectory())
                defer { if second.process.isRunning { kill(second.process.processIdentifier, SIGKILL) } }
                let view = try await server.waitForJob(id, states: ["failed", "success"], timeout: .seconds(60))
                #expect(view["state"] as? String == "success", "the real result, not a restart failure")
                let trace = view["trace"] as? String ?? ""
                for line in lines { #expect(trace.contains(line + "\n")) }
                #expect(trace.contains("Job succeeded"))
                #expect(!trace.contains("runner restarted"))
                #expect((view["final_update"] as? [String: Any])?["checksum_ok"] as? Bool == true)
                #expect((view["final_update"] as? [String: Any])?["bytesize_ok"] as? Bool == true)
                kill(second.process.processIdentifier, SIGTERM)
                _ = await second.waitSamplingMemory()
                await expectNothingLeft(work)
                server.stop()
            }
        }
    }

    @Test(
        "metrics and health are served; SIGHUP applies a valid file and refuses a broken one; SIGTERM lets a running job finish")
    func operations() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let server = try await FakeGitLab()
                try await server.scenario(["trace_update_interval": 1])
                let config = try writeConfig(directory, server: server)
                let original = try String(contentsOfFile: config, encoding: .utf8)
                try (original + "\nmetrics: { listen: 127.0.0.1:0 }\n").write(toFile: config, atomically: true, encoding: .utf8)
                let run = try MayflyProcess(
                    ["run", "--config", config], in: directory.appendingPathComponent("run").creatingDirectory())
                defer { if run.process.isRunning { kill(run.process.processIdentifier, SIGKILL) } }
                let http = HTTPClient(logger: Logger(label: "t") { _ in SwiftLogNoOpLogHandler() })

                // The metrics address is logged at start.
                var metricsURL = ""
                #expect(
                    await eventually(timeout: .seconds(20)) {
                        guard let range = run.errors.range(of: "metrics and health on ") else { return false }
                        metricsURL = String(run.errors[range.upperBound...].prefix { !$0.isWhitespace }).replacingOccurrences(
                            of: "/metrics", with: "")
                        return true
                    })
                #expect(
                    await eventually(timeout: .seconds(20)) {
                        (try? await http.execute(HTTPRequest(url: metricsURL + "/health")))?.status == 200
                    })
                let health = try await http.execute(HTTPRequest(url: metricsURL + "/health"))
                #expect(health.text.contains("\"polling\": true") && health.text.contains("\"fake\": true"), "\(health.text)")

                // A job, then its metrics.
                let (first, _) = try await server.enqueue([
                    "script": ["echo one"], "variables": [["key": "GIT_STRATEGY", "value": "none"]],
                ])
                _ = try await server.waitForJob(first, states: ["success", "failed"])
                let metrics = try await http.execute(HTTPRequest(url: metricsURL + "/metrics")).text
                #expect(metrics.contains("mayfly_jobs_total{result=\"success\"} 1"), "\(metrics.prefix(2000))")
                #expect(metrics.contains("mayfly_phase_duration_seconds_bucket{phase=\"boot\""))
                #expect(metrics.contains("mayfly_phase_duration_seconds_count{phase=\"script\"} 1"))
                #expect(metrics.contains("mayfly_running_vms 0"))

                // SIGHUP with a broken file: refused, the runner goes on.
                try "servers: [ broken\n".write(toFile: config, atomically: true, encoding: .utf8)
                kill(run.process.processIdentifier, SIGHUP)
                #expect(await eventually(timeout: .seconds(10)) { run.errors.contains("was not reloaded") })
                #expect(run.process.isRunning)
                // SIGHUP with a valid file: applied.
                try
                    (original.replacingOccurrences(of: "concurrency: 1", with: "concurrency: 2")
                    + "\nmetrics: { listen: 127.0.0.1:0 }\n")
                    .write(toFile: config, atomically: true, encoding: .utf8)
                kill(run.process.processIdentifier, SIGHUP)
                #expect(
                    await eventually(timeout: .seconds(10)) {
                        run.errors.contains("configuration reloaded: 1 server(s), concurrency 2")
                    })

                // SIGTERM while a job runs: the job finishes, then the runner exits.
                let (second, _) = try await server.enqueue([
                    "script": ["echo running", "sleep 4", "echo finished after the signal"],
                    "variables": [["key": "GIT_STRATEGY", "value": "none"]],
                ])
                _ = try await waitForTrace(server, second, containing: "running")
                kill(run.process.processIdentifier, SIGTERM)
                let (status, _) = await run.waitSamplingMemory()
                #expect(status == 0, "\(run.errors.suffix(2000))")
                let view = try await server.job(second)
                #expect(view["state"] as? String == "success")
                #expect((view["trace"] as? String)?.contains("finished after the signal") == true)
                await expectNothingLeft(directory.appendingPathComponent("work"))
                http.shutdown()
                server.stop()
            }
        }
    }

    @Test(
        "the warm pool: a job takes a ready clone (no clone or grace wait), the pool refills, old clones are recycled, shutdown empties it"
    )
    func warmPool() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let server = try await FakeGitLab()
                try await server.scenario(["trace_update_interval": 1])
                let config = try writeConfig(directory, server: server)
                let text = try String(contentsOfFile: config, encoding: .utf8)
                    .replacingOccurrences(of: "grace_period: 0", with: "grace_period: 2s")
                try (text + "\nwarm_pool: { size: 1, max_age: 8s }\nmetrics: { listen: 127.0.0.1:0 }\n")
                    .write(toFile: config, atomically: true, encoding: .utf8)
                let run = try MayflyProcess(
                    ["run", "--config", config], in: directory.appendingPathComponent("run").creatingDirectory())
                defer { if run.process.isRunning { kill(run.process.processIdentifier, SIGKILL) } }
                let clones = directory.appendingPathComponent("work/clones")
                func warm() -> [String] {
                    ((try? FileManager.default.contentsOfDirectory(atPath: clones.path)) ?? []).filter { $0.hasPrefix("warm-") }
                }
                #expect(await eventually(timeout: .seconds(20)) { warm().count == 1 }, "the pool fills")
                let first = warm()
                try await Task.sleep(for: .seconds(3))  // past the grace period

                let (id, _) = try await server.enqueue([
                    "script": ["echo hot"], "variables": [["key": "GIT_STRATEGY", "value": "none"]],
                ])
                let view = try await server.waitForJob(id, states: ["success", "failed"])
                let trace = view["trace"] as? String ?? ""
                #expect(view["state"] as? String == "success")
                #expect(trace.contains("Using a clone from the warm pool"))
                #expect(trace.contains("clone 0.000s, grace 0.000s"), "\(trace)")
                #expect(
                    await eventually(timeout: .seconds(20)) { warm().count == 1 && warm() != first },
                    "the pool refills with a new clone")
                let refilled = warm()
                #expect(
                    await eventually(timeout: .seconds(20)) { warm().count == 1 && warm() != refilled },
                    "a clone past max_age is recycled")

                var metricsURL = ""
                if let range = run.errors.range(of: "metrics and health on ") {
                    metricsURL = String(run.errors[range.upperBound...].prefix { !$0.isWhitespace })
                }
                let http = HTTPClient(logger: Logger(label: "t") { _ in SwiftLogNoOpLogHandler() })
                let metrics = try await http.execute(HTTPRequest(url: metricsURL)).text
                #expect(metrics.contains("mayfly_warm_pool_total{result=\"hit\"} 1"), "\(metrics.prefix(1500))")
                http.shutdown()

                // Reload with boot: true: the pool now holds a booted guest, and a job starts on it.
                let booted = try String(contentsOfFile: config, encoding: .utf8)
                    .replacingOccurrences(
                        of: "warm_pool: { size: 1, max_age: 8s }", with: "warm_pool: { size: 1, max_age: 5m, boot: true }")
                try booted.write(toFile: config, atomically: true, encoding: .utf8)
                kill(run.process.processIdentifier, SIGHUP)
                #expect(
                    await eventually(timeout: .seconds(90)) { run.errors.contains("a booted warm VM is ready") },
                    "a warm guest boots and is logged in to")
                let clock = ContinuousClock()
                let queued = clock.now
                let (hot, _) = try await server.enqueue([
                    "script": ["echo on a booted guest"], "variables": [["key": "GIT_STRATEGY", "value": "none"]],
                ])
                let hotView = try await server.waitForJob(hot, states: ["success", "failed"])
                let pickup = clock.now - queued
                let hotTrace = hotView["trace"] as? String ?? ""
                #expect(hotView["state"] as? String == "success")
                #expect(hotTrace.contains("Using a VM from the warm pool (already booted)"))
                #expect(hotTrace.contains("lock 0.000s, boot 0.000s"), "\(hotTrace)")
                print("measured: queued to finished on a warm booted VM: \(pickup)")

                kill(run.process.processIdentifier, SIGTERM)
                #expect(await run.waitSamplingMemory().status == 0)
                #expect(warm().isEmpty, "shutdown deletes the warm clones")
                await expectNothingLeft(directory.appendingPathComponent("work"))
                server.stop()
            }
        }
    }

    @Test("a reload that changes vm.bundle replaces the warm pool: the old bundle's clones go, the new one's come")
    func warmPoolFollowsReload() async throws {
        try await withTemporaryDirectory { directory in
            let server = try await FakeGitLab()
            let config = try writeConfig(directory, server: server)
            let text = try String(contentsOfFile: config, encoding: .utf8)
            try (text + "\nwarm_pool: { size: 1, max_age: 5m }\n").write(toFile: config, atomically: true, encoding: .utf8)
            let run = try MayflyProcess(
                ["run", "--config", config], in: directory.appendingPathComponent("run").creatingDirectory())
            defer { if run.process.isRunning { kill(run.process.processIdentifier, SIGKILL) } }
            let clones = directory.appendingPathComponent("work/clones")
            func warmBundles() -> [String] {
                ((try? FileManager.default.contentsOfDirectory(atPath: clones.path)) ?? []).filter { $0.hasPrefix("warm-") }.map {
                    let owner = clones.appendingPathComponent($0).appendingPathComponent("owner.json").path
                    return (try? String(contentsOfFile: owner, encoding: .utf8)) ?? ""
                }
            }
            let tiny = try TestBundle.tinyPath()
            let uefi = try TestBundle.tinyUEFIPath()
            #expect(await eventually(timeout: .seconds(20)) { warmBundles().count == 1 }, "the pool fills")
            #expect(
                warmBundles().allSatisfy { $0.contains(tiny.replacingOccurrences(of: "/", with: "\\/")) || $0.contains(tiny) })

            let reloaded = try String(contentsOfFile: config, encoding: .utf8).replacingOccurrences(
                of: "bundle: \(tiny),", with: "bundle: \(uefi),")
            #expect(reloaded.contains(uefi))
            try reloaded.write(toFile: config, atomically: true, encoding: .utf8)
            kill(run.process.processIdentifier, SIGHUP)
            #expect(
                await eventually(timeout: .seconds(30)) {
                    let bundles = warmBundles()
                    return bundles.count == 1 && bundles.allSatisfy { $0.contains("tiny-uefi") }
                }, "the pool now holds a clone of the new bundle only: \(warmBundles())")
            #expect(run.errors.contains("emptying the old pool"))

            kill(run.process.processIdentifier, SIGTERM)
            #expect(await run.waitSamplingMemory().status == 0)
            #expect(warmBundles().isEmpty, "shutdown deletes the warm clones")
            await expectNothingLeft(directory.appendingPathComponent("work"))
            server.stop()
        }
    }

    @Test("shutdown_timeout and a second SIGINT stop running jobs: reported failed with a line in their log, nothing left")
    func forcedShutdown() async throws {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let server = try await FakeGitLab()
                try await server.scenario(["trace_update_interval": 1])
                let config = try writeConfig(directory, server: server)
                let text = try String(contentsOfFile: config, encoding: .utf8).replacingOccurrences(
                    of: "shutdown_timeout: 1m", with: "shutdown_timeout: 3s")
                try text.write(toFile: config, atomically: true, encoding: .utf8)
                for (index, signals) in [[SIGTERM], [SIGINT, SIGINT]].enumerated() {
                    let run = try MayflyProcess(
                        ["run", "--config", config], in: directory.appendingPathComponent("run\(index)").creatingDirectory())
                    defer { if run.process.isRunning { kill(run.process.processIdentifier, SIGKILL) } }
                    let (id, _) = try await server.enqueue([
                        "script": ["echo long job", "sleep 300"], "variables": [["key": "GIT_STRATEGY", "value": "none"]],
                    ])
                    _ = try await waitForTrace(server, id, containing: "long job")
                    let clock = ContinuousClock()
                    let signalled = clock.now
                    for signal in signals {
                        kill(run.process.processIdentifier, signal)
                        try await Task.sleep(for: .milliseconds(300))
                    }
                    let (status, _) = await run.waitSamplingMemory()
                    let took = clock.now - signalled
                    #expect(status == 0, "\(run.errors.suffix(1500))")
                    #expect(took < (signals.count == 1 ? .seconds(12) : .seconds(6)), "stopped in \(took)")
                    let view = try await server.job(id)
                    #expect(view["state"] as? String == "failed")
                    #expect(view["failure_reason"] as? String == "runner_system_failure")
                    #expect((view["trace"] as? String)?.contains("the runner is shutting down") == true)
                    await expectNothingLeft(directory.appendingPathComponent("work"))
                    print(
                        "measured: \(signals.count == 1 ? "SIGTERM with shutdown_timeout 3s" : "SIGINT twice") to exit with a running job: \(took)"
                    )
                }
                server.stop()
            }
        }
    }

    func waitForTrace(_ server: FakeGitLab, _ id: Int, containing text: String) async throws -> String {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(120)
        while clock.now < deadline {
            let trace = try await server.job(id)["trace"] as? String ?? ""
            if trace.contains(text) { return trace }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw FakeGitLab.Failure(
            description: "job \(id)'s trace never showed '\(text)': \(try await server.job(id)["state"] ?? "?")")
    }
}
