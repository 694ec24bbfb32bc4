import ArgumentParser
import Foundation
import Logging
import MayflyAgent
import MayflyCore
import MayflyGitLab
import MayflyHTTP

/// `mayfly register`: attaches this host to a GitLab server as a runner and records it in the
/// configuration file, with the token in a 0600 token file beside it.
struct Register: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Register with a GitLab server and add it to the configuration.",
        discussion: """
            A runner token (--token: glrt-…, made in GitLab under CI/CD → Runners, or any runner token) is \
            verified with POST /runners/verify, as gitlab-runner does. A legacy registration token \
            (--registration-token) is exchanged for a runner token with POST /runners. \
            The token goes to a token file (mode 0600) next to the configuration file, and a servers entry naming it \
            is added to the configuration (created if missing).
            """)

    @OptionGroup var options: ConfigOptions
    @Option(help: "The GitLab server's URL, e.g. https://gitlab.example.com.") var url: String
    @Option(help: "A runner authentication token (glrt-…); it is verified, never exchanged.") var token: String?
    @Option(name: .customLong("token-file"), help: "Read the runner token from this file instead of the command line.")
    var tokenFile: String?
    @Option(
        name: .customLong("registration-token"),
        help: "A legacy registration token, exchanged for a runner token (deprecated by GitLab).")
    var registrationToken: String?
    @Option(help: "The name of the servers entry (default: the URL's host).") var name: String?
    @Option(help: "Description (legacy registration only).") var description: String = ProcessInfo.processInfo.hostName
    @Option(name: .customLong("tag-list"), help: "Comma-separated tags (legacy registration only).") var tagList: String = ""
    @Flag(name: .customLong("run-untagged"), help: "Take untagged jobs (legacy registration only).") var runUntagged = false
    @Option(name: .customLong("ca-file"), help: "A PEM CA bundle to trust for this server.") var caFile: String?

    func run() async throws {
        guard let host = URL(string: url)?.host, ["http", "https"].contains(URL(string: url)?.scheme?.lowercased() ?? "") else {
            throw ValidationError("--url must be an http:// or https:// URL")
        }
        let secret: Secret
        let legacy = registrationToken != nil
        guard [token != nil, tokenFile != nil, legacy].filter({ $0 }).count == 1 else {
            throw ValidationError("give one of --token, --token-file or --registration-token")
        }
        if let tokenFile {
            guard let text = try? String(contentsOfFile: tokenFile, encoding: .utf8) else {
                throw ValidationError("cannot read \(tokenFile)")
            }
            secret = Secret(text.trimmingWhitespace())
        } else {
            secret = Secret(token ?? registrationToken ?? "")
        }
        let entryName = name ?? host
        let configPath = options.config
        let existing =
            FileManager.default.fileExists(atPath: configPath) ? try String(contentsOfFile: configPath, encoding: .utf8) : ""
        let configuration =
            existing.isEmpty ? MayflyAgent.Configuration(name: ProcessInfo.processInfo.hostName) : try options.load()
        if configuration.servers.contains(where: { $0.name == entryName }) {
            throw ValidationError("\(configPath) already has a server named '\(entryName)'; unregister it first or pass --name")
        }
        let logger = LoggingSetup.logger("mayfly", for: configuration)
        var tls = TLSOptions()
        tls.caFile = caFile.map { ($0 as NSString).standardizingPath }
        let client = GitLabClient(url: url, tls: tls, proxy: nil, logger: logger)
        defer { client.shutdown() }

        let credentials: GitLabClient.Credentials
        if !legacy {
            let systemID = try SystemID.load(workDirectory: configuration.workDirectory)
            credentials = try await client.verify(token: secret, systemID: systemID)
            print("verified runner \(credentials.id) on \(url)")
        } else {
            credentials = try await client.register(
                registrationToken: secret, description: description,
                tags: tagList.split(separator: ",").map { String($0).trimmingWhitespace() }.filter { !$0.isEmpty },
                runUntagged: runUntagged)
            print("registered runner \(credentials.id) on \(url)")
        }

        let directory = (configPath as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory.isEmpty ? "." : directory, withIntermediateDirectories: true)
        let tokenName = String(entryName.map { $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" ? $0 : "_" }) + ".token"
        let tokenPath = (directory.isEmpty ? "." : directory) + "/" + tokenName
        guard
            FileManager.default.createFile(
                atPath: tokenPath, contents: Data((credentials.token.reveal() + "\n").utf8),
                attributes: [.posixPermissions: 0o600])
        else { throw ValidationError("cannot write \(tokenPath)") }
        chmod(tokenPath, 0o600)
        let text = try ConfigurationEditor.addingServer(
            to: existing, name: entryName, url: url, tokenFile: tokenName, caFile: tls.caFile)
        // Check the result before replacing the file.
        _ = try ConfigurationLoader().parse(text, file: configPath, baseDirectory: directory.isEmpty ? "." : directory)
        let temporary = configPath + ".tmp-\(getpid())"
        try text.write(toFile: temporary, atomically: false, encoding: .utf8)
        guard rename(temporary, configPath) == 0 else { throw ValidationError("cannot replace \(configPath)") }
        print("added server '\(entryName)' to \(configPath) (token in \(tokenPath), mode 0600)")
    }
}

/// `mayfly unregister --name NAME`: removes this runner from a GitLab server and the entry from
/// the configuration.
struct Unregister: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Unregister from a GitLab server and remove it from the configuration.",
        discussion:
            "glrt- tokens remove only this host's runner manager (DELETE /runners/managers); legacy tokens remove the runner (DELETE /runners)."
    )

    @OptionGroup var options: ConfigOptions
    @Option(help: "The servers entry to remove.") var name: String

    func run() async throws {
        let configuration = try options.load()
        guard let server = configuration.servers.first(where: { $0.name == name }) else {
            throw ValidationError("\(options.config) has no server named '\(name)'")
        }
        let logger = LoggingSetup.logger("mayfly", for: configuration)
        let client = GitLabClient(url: server.url, tls: server.tls, proxy: server.proxy, logger: logger)
        defer { client.shutdown() }
        let systemID = try SystemID.load(workDirectory: configuration.workDirectory)
        try await client.unregister(token: server.token, systemID: systemID)
        print("unregistered from \(server.url)")
        let text = try String(contentsOfFile: options.config, encoding: .utf8)
        let (updated, tokenFile) = try ConfigurationEditor.removingServer(from: text, name: name) { URL(string: $0)?.host }
        let temporary = options.config + ".tmp-\(getpid())"
        try updated.write(toFile: temporary, atomically: false, encoding: .utf8)
        guard rename(temporary, options.config) == 0 else { throw ValidationError("cannot replace \(options.config)") }
        if let tokenFile, server.tokenSource.hasSuffix(tokenFile) {
            try? FileManager.default.removeItem(atPath: server.tokenSource)
        }
        print("removed server '\(name)' from \(options.config)")
    }
}
