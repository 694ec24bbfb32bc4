import Foundation
import MayflyTestSupport
import Testing

/// Runs git on the host for a test fixture; fails the test with git's message on error.
@discardableResult
func hostGit(_ arguments: [String], in directory: URL) throws -> String {
    try TestBundle.output(
        "/usr/bin/git", ["-c", "user.email=ci@example.com", "-c", "user.name=ci", "-c", "init.defaultBranch=main"] + arguments,
        in: directory)
}

/// The Debian 12 bundle built by deploy/images/debian/build.sh: present when deploy/test.sh built
/// it (`MAYFLY_TEST_DEBIAN=1`), or when MAYFLY_DEBIAN_BUNDLE names one.
enum DebianBundle {
    static var path: String? {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["MAYFLY_DEBIAN_BUNDLE"] { return path }
        guard environment["MAYFLY_TEST_DEBIAN"] == "1" else { return nil }
        return repositoryRoot.appendingPathComponent(".images/debian-12").path
    }

    /// The same system laid out as a UEFI cloud image (GPT, EFI system partition, systemd-boot),
    /// written by `build.sh --cloud-image`: what `mayfly bundle import --cloud-image` takes.
    static var cloudImage: String? {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["MAYFLY_DEBIAN_CLOUD_IMAGE"] { return path }
        guard environment["MAYFLY_TEST_DEBIAN"] == "1" else { return nil }
        return repositoryRoot.appendingPathComponent(".images/debian-12-cloud.qcow2").path
    }
}

@Suite("A stock-style Debian 12 image", .serialized, .enabled(if: DebianBundle.path != nil, "set MAYFLY_TEST_DEBIAN=1"))
struct DebianImageTests {
    @Test("a job runs in the Debian bundle with per-clone keys from cloud-init: git, systemd, hostname; nothing is left")
    func job() async throws {
        let bundle = try #require(DebianBundle.path)
        #expect(FileManager.default.fileExists(atPath: bundle + "/bundle.yaml"), "build it with deploy/images/debian/build.sh")
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let job = directory.appendingPathComponent("job.yml")
                try """
                script:
                  - git --version
                  - systemctl is-active ssh
                  - echo "hostname=$(hostname)"
                  - echo "cloud-init=$(cloud-init status)"
                  - getent hosts deb.debian.org >/dev/null && echo "dns works through passt"
                  - cd /builds && git init -q demo && cd demo && git -c user.email=ci@example.com -c user.name=ci commit -q --allow-empty -m first && git log --oneline | wc -l
                  - echo "host key=$(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub)"
                """.write(to: job, atomically: true, encoding: .utf8)
                let run = try MayflyProcess(
                    [
                        "exec", "--config",
                        try execConfig(directory, vm: "{ accelerator: tcg, grace_period: 0, boot_timeout: 10m }"),
                        job.path, "--bundle", bundle,
                    ], in: directory)
                let (status, _) = await run.waitSamplingMemory()
                #expect(status == 0, "\(run.output)\n\(run.errors)")
                #expect(run.output.contains("git version 2."))
                #expect(run.output.contains("\nactive\n"), "sshd runs under systemd")
                #expect(run.output.contains("hostname=mayfly-"), "the hostname came from the clone's seed")
                #expect(run.output.contains("cloud-init=status: done"))
                #expect(run.output.contains("dns works through passt"), "the isolated guest still resolves names")
                // The host key the guest serves is the one Mayfly generated for the clone (and pinned).
                let hostKey = run.output.split(separator: "\n").first { $0.hasPrefix("host key=") }.map { $0.dropFirst(9) }
                #expect(hostKey != nil && !hostKey!.isEmpty)
                await expectNothingLeft(directory.appendingPathComponent("work"))
            }
        }
    }

    @Test("bundle import --cloud-image: a UEFI cloud image is detected, imported and runs a job under OVMF with its seed")
    func importedCloudImage() async throws {
        let image = try #require(DebianBundle.cloudImage)
        #expect(FileManager.default.fileExists(atPath: image), "build it with deploy/images/debian/build.sh --cloud-image")
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let config = try execConfig(directory, vm: "{ accelerator: tcg, grace_period: 0, boot_timeout: 10m }")
                let imported = try MayflyProcess(
                    ["bundle", "import", "--config", config, "cloud", "--cloud-image", image], in: directory)
                #expect(await imported.waitSamplingMemory().status == 0, "\(imported.errors)")
                #expect(imported.output.contains("boot uefi, provision cloud-init"), "\(imported.output)")
                let job = directory.appendingPathComponent("job.yml")
                try
                    "script:\n  - findmnt -rno FSTYPE /\n  - test -d /sys/firmware/efi && echo booted-by-uefi\n  - git --version\n"
                    .write(to: job, atomically: true, encoding: .utf8)
                let run = try MayflyProcess(
                    ["exec", "--config", config, job.path, "--bundle", "cloud"],
                    in: directory.appendingPathComponent("run").creatingDirectory())
                let (status, _) = await run.waitSamplingMemory()
                #expect(status == 0, "\(run.output)\n\(run.errors)")
                #expect(run.output.contains("\next4\n"))
                #expect(run.output.contains("booted-by-uefi"))
                #expect(run.output.contains("git version 2."))
                await expectNothingLeft(directory.appendingPathComponent("work"))
            }
        }
    }

    @Test(
        "mayfly run: a GitLab job in the Debian guest clones its sources from a host-loopback git server it may reach only through allow_host_ports"
    )
    func gitLabJobWithSources() async throws {
        let bundle = try #require(DebianBundle.path)
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                // A repository served over git's dumb HTTP protocol on the host's 127.0.0.1 only.
                let source = try directory.appendingPathComponent("source").creatingDirectory()
                try hostGit(["init", "-q"], in: source)
                try "sources from the host\n".write(
                    to: source.appendingPathComponent("hello.txt"), atomically: true, encoding: .utf8)
                try hostGit(["add", "hello.txt"], in: source)
                try hostGit(["commit", "-q", "-m", "the commit under test"], in: source)
                let sha = try hostGit(["rev-parse", "HEAD"], in: source)
                let served = try directory.appendingPathComponent("served").creatingDirectory()
                try hostGit(
                    ["clone", "-q", "--bare", source.path, served.appendingPathComponent("repo.git").path], in: directory)
                try hostGit(["update-server-info"], in: served.appendingPathComponent("repo.git"))
                let port = try TestBundle.freeLoopbackPort()
                let gitServer = try TestChild(
                    "/usr/bin/python3", ["-m", "http.server", "\(port)", "--bind", "127.0.0.1", "--directory", served.path])
                defer { gitServer.kill() }

                let server = try await FakeGitLab()
                try await server.scenario(["trace_update_interval": 1])
                let token = directory.appendingPathComponent("gitlab.token")
                try (FakeGitLab.runnerToken + "\n").write(to: token, atomically: true, encoding: .utf8)
                chmod(token.path, 0o600)
                let config = directory.appendingPathComponent("mayfly.yaml")
                try """
                work_dir: \(directory.path)/work
                vm: { bundle: \(bundle), accelerator: tcg, grace_period: 0, boot_timeout: 10m, allow_host_ports: [\(port)] }
                servers:
                  - name: fake
                    url: \(server.url)
                    token_file: gitlab.token
                    poll_interval: 500ms
                """.write(to: config, atomically: true, encoding: .utf8)
                let run = try MayflyProcess(["run", "--config", config.path], in: directory)
                defer { if run.process.isRunning { kill(run.process.processIdentifier, SIGKILL) } }

                let (id, _) = try await server.enqueue([
                    "script": ["pwd", "cat hello.txt", "git log -1 --format=%s"],
                    "variables": [["key": "GIT_STRATEGY", "value": "clone"]],
                    "raw": [
                        "git_info": [
                            "repo_url": "http://127.0.0.1:\(port)/repo.git", "sha": sha, "ref": "main", "depth": 0,
                            "refspecs": ["+refs/heads/main:refs/remotes/origin/main"],
                        ]
                    ],
                ])
                let view = try await server.waitForJob(id, states: ["success", "failed"], timeout: .seconds(600))
                let trace = view["trace"] as? String ?? ""
                #expect(view["state"] as? String == "success", "\(trace)\n\(run.errors)")
                #expect(trace.contains("Getting sources: fresh clone for main"))
                #expect(trace.contains("/builds/mayfly/mayfly-test\n"), "the job runs in CI_PROJECT_DIR")
                #expect(trace.contains("sources from the host\n"))
                #expect(trace.contains("the commit under test\n"))
                kill(run.process.processIdentifier, SIGTERM)
                #expect(await run.waitSamplingMemory().status == 0)
                await expectNothingLeft(directory.appendingPathComponent("work"))
                server.stop()
            }
        }
    }
}
