import Foundation
import MayflyTestSupport
import Testing

/// The Debian 12 bundle built by deploy/images/debian/build.sh: present when deploy/test.sh built
/// it (`MAYFLY_TEST_DEBIAN=1`), or when MAYFLY_DEBIAN_BUNDLE names one.
enum DebianBundle {
    static var path: String? {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["MAYFLY_DEBIAN_BUNDLE"] { return path }
        guard environment["MAYFLY_TEST_DEBIAN"] == "1" else { return nil }
        return repositoryRoot.appendingPathComponent(".images/debian-12").path
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
                // The host key the guest serves is the one Mayfly generated for the clone (and pinned).
                let hostKey = run.output.split(separator: "\n").first { $0.hasPrefix("host key=") }.map { $0.dropFirst(9) }
                #expect(hostKey != nil && !hostKey!.isEmpty)
                await expectNothingLeft(directory.appendingPathComponent("work"))
            }
        }
    }
}
