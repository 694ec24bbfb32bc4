import Foundation
import MayflyTestSupport
import Testing

/// Runs the built `mayfly` executable and collects its exit status and output.
func runMayfly(_ arguments: [String], environment: [String: String] = [:]) throws -> (
    status: Int32, stdout: String, stderr: String
) {
    let executable = repositoryRoot.appendingPathComponent(".build/debug/mayfly")
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    let stderr = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
}

@Suite("The mayfly command", .serialized)
struct CommandLineTests {
    @Test("config check: 0 and the redacted configuration for a good file, 78 and file:line:column for a bad one")
    func configCheck() async throws {
        try await withTemporaryDirectory { directory in
            let good = directory.appendingPathComponent("good.yaml")
            try "servers:\n  - url: https://ci.example.org\n    token: ${T}\n".write(to: good, atomically: true, encoding: .utf8)
            let ok = try runMayfly(["config", "check", "--config", good.path], environment: ["T": "glrt-cli-secret"])
            #expect(ok.status == 0, "\(ok.stderr)")
            #expect(ok.stdout.contains("url: https://ci.example.org"))
            #expect(ok.stdout.contains("[REDACTED]"))
            #expect(!ok.stdout.contains("glrt-cli-secret") && !ok.stderr.contains("glrt-cli-secret"))

            let bad = directory.appendingPathComponent("bad.yaml")
            try "vm:\n  clone: reflnk\n".write(to: bad, atomically: true, encoding: .utf8)
            let failed = try runMayfly(["config", "check", "--config", bad.path])
            #expect(failed.status == 78)
            #expect(failed.stderr.contains("\(bad.path):2:10:"))
            #expect(failed.stderr.contains("did you mean 'reflink'?"))

            let missing = try runMayfly(["config", "check", "--config", directory.appendingPathComponent("none.yaml").path])
            #expect(missing.status == 78)
            #expect(missing.stderr.contains("does not exist"))

            // A bundle that is not installed: a warning for check, an error for run, both at its line.
            let noBundle = directory.appendingPathComponent("nobundle.yaml")
            let text = "work_dir: \(directory.path)\nservers:\n  - url: https://ci.example.org\n    token: glrt-x\n"
            try (text + "vm:\n  bundle: debain-12\n").write(to: noBundle, atomically: true, encoding: .utf8)
            let checked = try runMayfly(["config", "check", "--config", noBundle.path])
            #expect(checked.status == 0, "\(checked.stderr)")
            #expect(checked.stderr.contains("warning: \(noBundle.path):6:11: 'vm.bundle'"), "\(checked.stderr)")
            #expect(checked.stderr.contains("no bundle named 'debain-12'"))
            let run = try runMayfly(["run", "--config", noBundle.path])
            #expect(run.status == 78, "\(run.stderr)")
            #expect(run.stderr.contains("\(noBundle.path):6:11: 'vm.bundle'"), "\(run.stderr)")
        }
    }

    @Test("doctor prints one line per check and exits by the worst result")
    func doctor() async throws {
        try await withTemporaryDirectory { directory in
            let config = directory.appendingPathComponent("c.yaml")
            try "work_dir: \(directory.path)\nvm: { accelerator: tcg }\n".write(to: config, atomically: true, encoding: .utf8)
            let result = try runMayfly(["doctor", "--config", config.path])
            #expect(result.stdout.contains("qemu-img"))
            #expect(result.stdout.contains("work_dir"))
            #expect(result.stdout.contains("clone "))
            let failed = result.stdout.split(separator: "\n").contains { $0.contains(" fail ") }
            #expect(result.status == (failed ? 1 : 0), "\(result.stdout)")
        }
    }

    @Test("bundle verify: 0 for an intact bundle, 65 and each mismatch for a damaged one; inspect shows the manifest")
    func bundleCommands() async throws {
        try await withTemporaryDirectory { directory in
            let copy = try TestBundle.copyTiny(into: directory)
            let intact = try runMayfly(["bundle", "verify", copy])
            #expect(intact.status == 0, "\(intact.stderr)")
            #expect(intact.stdout.contains("all 6 files match"))
            let inspect = try runMayfly(["bundle", "inspect", copy])
            #expect(inspect.status == 0)
            #expect(inspect.stdout.contains("boot:     kernel"))
            try "changed".write(toFile: copy + "/ssh/id_ed25519.pub", atomically: false, encoding: .utf8)
            let damaged = try runMayfly(["bundle", "verify", copy])
            #expect(damaged.status == 65)
            #expect(damaged.stdout.contains("mismatch: ssh/id_ed25519.pub"))
            let missing = try runMayfly(["bundle", "inspect", directory.appendingPathComponent("nothing").path])
            #expect(missing.status == 65)
            #expect(missing.stderr.contains("is not a bundle directory"))
        }
    }

    @Test("version and usage errors")
    func versionAndUsage() throws {
        let version = try runMayfly(["version"])
        #expect(version.status == 0)
        #expect(version.stdout.hasPrefix("mayfly "))
        let usage = try runMayfly(["no-such-command"])
        #expect(usage.status == 64)
    }
}
