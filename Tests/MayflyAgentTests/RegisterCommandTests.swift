import Foundation
import MayflyCore
import MayflyTestSupport
import Testing

@testable import MayflyAgent

@Suite("mayfly register and unregister", .serialized)
struct RegisterCommandTests {
    @Test("register with a glrt- token and with a legacy token edits the configuration in place; unregister undoes it")
    func registerAndUnregister() async throws {
        let server = try await FakeGitLab(tls: true)
        let ca = try TestPKI.shared().caCertificate
        try await withTemporaryDirectory { directory in
            let config = directory.appendingPathComponent("mayfly.yaml")
            try "# my runner\nname: host-1\nwork_dir: \(directory.path)/work\nvm: { bundle: tiny }  # keep this comment\n"
                .write(to: config, atomically: true, encoding: .utf8)

            let first = try runMayfly([
                "register", "--config", config.path, "--url", server.url, "--token", FakeGitLab.runnerToken,
                "--name", "main", "--ca-file", ca,
            ])
            #expect(first.status == 0, "\(first.stderr)")
            #expect(!first.stdout.contains(FakeGitLab.runnerToken) && !first.stderr.contains(FakeGitLab.runnerToken))
            let second = try runMayfly([
                "register", "--config", config.path, "--url", server.url + "/", "--registration-token",
                FakeGitLab.registrationToken,
                "--name", "legacy", "--ca-file", ca, "--tag-list", "linux,vm",
            ])
            #expect(second.status == 0, "\(second.stderr)")

            let text = try String(contentsOf: config, encoding: .utf8)
            #expect(text.hasPrefix("# my runner\nname: host-1\n"), "the rest of the file is kept")
            #expect(text.contains("vm: { bundle: tiny }  # keep this comment"))
            let loaded = try ConfigurationLoader().load(path: config.path)
            #expect(loaded.servers.map(\.name) == ["main", "legacy"])
            #expect(loaded.servers[0].token.reveal() == FakeGitLab.runnerToken)
            #expect(loaded.servers[1].token.reveal().hasPrefix("glrtr-"), "the legacy token was exchanged")
            #expect(loaded.servers[0].tls.caFile == ca)
            let tokenFile = directory.appendingPathComponent("main.token").path
            let mode = try #require(try FileManager.default.attributesOfItem(atPath: tokenFile)[.posixPermissions] as? Int)
            #expect(mode == 0o600)
            #expect(!text.contains(FakeGitLab.runnerToken), "the token is in its file, not in the configuration")

            let again = try runMayfly([
                "register", "--config", config.path, "--url", server.url, "--token", FakeGitLab.runnerToken,
                "--name", "main", "--ca-file", ca,
            ])
            #expect(again.status != 0, "a second entry with the same name is refused")
            let wrong = try runMayfly([
                "register", "--config", config.path, "--url", server.url, "--token", "glrt-wrong", "--name", "x",
                "--ca-file", ca,
            ])
            #expect(wrong.status == 69)
            #expect(wrong.stderr.contains("refused the token"))
            let notExchanged = try runMayfly([
                "register", "--config", config.path, "--url", server.url, "--token", FakeGitLab.registrationToken, "--name", "y",
                "--ca-file", ca,
            ])
            #expect(notExchanged.status == 69, "a --token is verified (and refused here), never exchanged for a new runner")
            #expect(!notExchanged.stderr.contains(FakeGitLab.registrationToken))

            let removed = try runMayfly(["unregister", "--config", config.path, "--name", "main"])
            #expect(removed.status == 0, "\(removed.stderr)")
            let after = try ConfigurationLoader().load(path: config.path)
            #expect(after.servers.map(\.name) == ["legacy"])
            #expect(!FileManager.default.fileExists(atPath: tokenFile))
            let deletes = try await server.requests(method: "DELETE")
            #expect(deletes.last?["path"] as? String == "/api/v4/runners/managers")
        }
        server.stop()
    }

    @Test("the editor adds to a missing, an empty or a block list of servers and removes the right entry")
    func editor() throws {
        let added = try ConfigurationEditor.addingServer(to: "", name: "a", url: "https://a", tokenFile: "a.token")
        #expect(added == "servers:\n  - name: \"a\"\n    type: gitlab\n    url: \"https://a\"\n    token_file: \"a.token\"\n")
        let fromEmpty = try ConfigurationEditor.addingServer(
            to: "name: x\nservers: []\nmetrics: {}\n", name: "b", url: "https://b", tokenFile: "b.token")
        #expect(fromEmpty.hasPrefix("name: x\nservers:\n  - name: \"b\"\n"))
        #expect(fromEmpty.hasSuffix("metrics: {}\n"))
        let two = try ConfigurationEditor.addingServer(
            to: added + "# end\nmetrics: {}\n", name: "c", url: "https://c", tokenFile: "c.token")
        let (removed, token) = try ConfigurationEditor.removingServer(from: two, name: "a") { _ in nil }
        #expect(token == "a.token")
        #expect(!removed.contains("\"a\"") && removed.contains("name: \"c\"") && removed.contains("metrics: {}"))
        #expect(throws: (any Error).self) { try ConfigurationEditor.removingServer(from: two, name: "zzz") { _ in nil } }
    }
}
