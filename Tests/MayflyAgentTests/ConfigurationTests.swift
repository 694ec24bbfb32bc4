import Foundation
import MayflyCore
import MayflyTestSupport
import MayflyVM
import Testing

@testable import MayflyAgent

/// The repository's top directory, found from this source file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// A loader with a fixed environment and host name, so tests do not depend on the machine.
func loader(_ environment: [String: String] = [:]) -> ConfigurationLoader {
    ConfigurationLoader(environment: environment, hostName: "test-host")
}

@Suite("Configuration")
struct ConfigurationTests {
    @Test("an empty file gives every default")
    func defaults() throws {
        let configuration = try loader().parse("", file: "empty.yaml", baseDirectory: "/etc/mayfly")
        #expect(configuration.name == "test-host")
        #expect(configuration.workDirectory == "/var/lib/mayfly")
        #expect(configuration.concurrency == 1)
        #expect(configuration.shutdownTimeout == .seconds(1800))
        #expect(configuration.logLevel == .info)
        #expect(configuration.logFormat == .text)
        #expect(configuration.vm.bundle == nil)
        #expect(configuration.vm.accelerator == .auto)
        #expect(configuration.vm.clone == .auto)
        #expect(configuration.vm.gracePeriod == .seconds(5))
        #expect(configuration.vm.lockRetry == LockRetryPolicy(attempts: 8, initial: .milliseconds(250), maximum: .seconds(8)))
        #expect(configuration.vm.bootTimeout == .seconds(180))
        #expect(configuration.warmPool.size == 0)
        #expect(configuration.job.timeout == .seconds(3600))
        #expect(configuration.job.logLimit == .mebibytes(100))
        #expect(configuration.servers.isEmpty)
        #expect(configuration.metrics.listen == nil)
    }

    @Test("the example configuration loads, with every key it documents")
    func exampleLoads() async throws {
        let example = repositoryRoot.appendingPathComponent("config/mayfly.example.yaml")
        let text = try String(contentsOf: example, encoding: .utf8)
        try await withTemporaryDirectory { directory in
            let token = directory.appendingPathComponent("gitlab.token")
            try "glrt-example\n".write(to: token, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: token.path)
            let configuration = try loader().parse(text, file: example.path, baseDirectory: directory.path)
            #expect(configuration.name == "builder-01")
            #expect(configuration.concurrency == 2)
            #expect(configuration.vm.bundle == "debian-12")
            #expect(configuration.vm.memory == .gibibytes(2))
            #expect(configuration.vm.cpus == 2)
            #expect(configuration.servers.count == 1)
            #expect(configuration.servers[0].token.reveal() == "glrt-example")
            #expect(configuration.servers[0].pollInterval == .seconds(3))
            #expect(configuration.metrics.listen == "127.0.0.1:9252")
            #expect(configuration.warnings.isEmpty)
            // Every top-level and section key the loader knows appears in the example.
            for key in ConfigurationLoader.topLevelKeys + ConfigurationLoader.vmKeys + ConfigurationLoader.warmPoolKeys
                + ConfigurationLoader.jobKeys + ConfigurationLoader.serverKeys + ConfigurationLoader.tlsKeys
                + ConfigurationLoader.lockRetryKeys + ConfigurationLoader.metricsKeys
            {
                #expect(text.contains("\(key):"), "the example documents \(key)")
            }
        }
    }

    @Test("durations, sizes, enumerations and nested sections are read")
    func values() throws {
        let text = """
            name: runner-a
            work_dir: work
            concurrency: 4
            shutdown_timeout: 1h30m
            log_level: debug
            log_format: json
            vm:
              bundle: ./bundles/tiny
              cpus: 1
              memory: 512MiB
              accelerator: tcg
              clone: overlay
              grace_period: 0
              lock_retry: { attempts: 3, initial: 100ms, max: 1s }
              boot_timeout: 90s
              network: user
              allow_host_ports: [5432, 6379]
            warm_pool: { size: 2, max_age: 10m, boot: true }
            job: { timeout: 20m, log_limit: 4MiB }
            servers:
              - url: https://ci.example.org/
                token: ${RUNNER_TOKEN}
                poll_interval: 500ms
                proxy: http://proxy.example.org:3128
            metrics: { listen: "[::1]:9300" }
            """
        let configuration = try loader(["RUNNER_TOKEN": "glrt-abc"]).parse(text, file: "c.yaml", baseDirectory: "/etc/mayfly")
        #expect(configuration.workDirectory == "/etc/mayfly/work")
        #expect(configuration.shutdownTimeout == .seconds(5400))
        #expect(configuration.vm.network.mode == .user)
        #expect(configuration.vm.network.allowHostPorts == [5432, 6379])
        #expect(configuration.logFormat == .json)
        #expect(configuration.vm.bundle == "/etc/mayfly/bundles/tiny")
        #expect(configuration.vm.memory == .mebibytes(512))
        #expect(configuration.vm.accelerator == .tcg)
        #expect(configuration.vm.clone == .overlay)
        #expect(configuration.vm.gracePeriod == .zero)
        #expect(configuration.vm.lockRetry == LockRetryPolicy(attempts: 3, initial: .milliseconds(100), maximum: .seconds(1)))
        #expect(configuration.warmPool.size == 2 && configuration.warmPool.boot)
        #expect(configuration.job.logLimit == .mebibytes(4))
        let server = try #require(configuration.servers.first)
        #expect(server.name == "ci.example.org")
        #expect(server.kind == .gitlab)
        #expect(server.token.reveal() == "glrt-abc")
        #expect(server.tokenSource == "environment")
        #expect(server.pollInterval == .milliseconds(500))
        #expect(server.proxy == "http://proxy.example.org:3128")
        #expect(configuration.metrics.listen == "[::1]:9300")
        #expect(configuration.warnings.isEmpty)
    }

    @Test("secrets never appear in the rendered configuration or in descriptions")
    func secretsRedacted() throws {
        let text = """
            servers:
              - url: https://ci.example.org
                token: glrt-very-secret-value
                proxy: http://user:proxypass@proxy:3128
            """
        let configuration = try loader().parse(text, file: "c.yaml", baseDirectory: "/tmp")
        let rendered = configuration.rendered()
        #expect(!rendered.contains("glrt-very-secret-value"))
        #expect(!rendered.contains("proxypass"))
        #expect(rendered.contains("[REDACTED]"))
        #expect(!String(describing: configuration).contains("glrt-very-secret-value"))
        #expect(!String(reflecting: configuration.servers[0]).contains("glrt-very-secret-value"))
        // An inline token is allowed but warned about, with its position.
        let warning = try #require(configuration.warnings.first)
        #expect(warning.line == 3)
        #expect(warning.message.contains("inline"))
    }

    @Test("a token file is read, trimmed, and a group- or world-readable one is warned about")
    func tokenFile() async throws {
        try await withTemporaryDirectory { directory in
            let token = directory.appendingPathComponent("token")
            try "glrt-from-file\n".write(to: token, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: token.path)
            let text = "servers:\n  - url: https://ci.example.org\n    token_file: token\n"
            let configuration = try loader().parse(text, file: "c.yaml", baseDirectory: directory.path)
            #expect(configuration.servers[0].token.reveal() == "glrt-from-file")
            #expect(configuration.warnings.contains { $0.message.contains("chmod 600") && $0.line == 3 })
        }
    }

    @Test("load names the file when it does not exist")
    func missingFile() {
        let error = #expect(throws: ConfigurationError.self) { try loader().load(path: "/nonexistent/mayfly.yaml") }
        #expect(error?.description.hasPrefix("/nonexistent/mayfly.yaml: does not exist") == true)
    }

    /// A bad file, the line and column its error must point at, and words the message must contain.
    struct BadFile: Sendable, CustomTestStringConvertible {
        let yaml: String
        let line: Int
        let column: Int
        let mentions: [String]
        var testDescription: String { mentions.joined(separator: " / ") }
    }

    static let badFiles: [BadFile] = [
        BadFile(
            yaml: "vm:\n  grace_perod: 5s\n", line: 2, column: 3,
            mentions: ["unknown key 'grace_perod'", "did you mean 'grace_period'?"]),
        BadFile(yaml: "concurency: 2\n", line: 1, column: 1, mentions: ["unknown key 'concurency'", "'concurrency'"]),
        BadFile(yaml: "bogus_key: 1\n", line: 1, column: 1, mentions: ["unknown key 'bogus_key' at the top level"]),
        BadFile(yaml: "concurrency: two\n", line: 1, column: 14, mentions: ["'concurrency' must be a whole number", "'two'"]),
        BadFile(yaml: "concurrency: 0\n", line: 1, column: 14, mentions: ["between 1 and 256", "not 0"]),
        BadFile(yaml: "concurrency: [1, 2]\n", line: 1, column: 14, mentions: ["must be a whole number, not a list"]),
        BadFile(yaml: "vm:\n  grace_period: -5s\n", line: 2, column: 17, mentions: ["cannot be negative"]),
        BadFile(yaml: "vm:\n  grace_period: 5 seconds\n", line: 2, column: 17, mentions: ["not a duration", "unit 'seconds'"]),
        BadFile(yaml: "vm:\n  boot_timeout: soon\n", line: 2, column: 17, mentions: ["'vm.boot_timeout'", "not a duration"]),
        BadFile(yaml: "vm:\n  memory: 2 gigs\n", line: 2, column: 11, mentions: ["not a size", "unknown unit 'gigs'"]),
        BadFile(yaml: "vm:\n  memory: 1MiB\n", line: 2, column: 11, mentions: ["at least 64MiB"]),
        BadFile(yaml: "vm:\n  accelerator: hvf\n", line: 2, column: 16, mentions: ["one of auto, kvm, tcg", "'hvf'"]),
        BadFile(yaml: "vm:\n  clone: reflnk\n", line: 2, column: 10, mentions: ["did you mean 'reflink'?"]),
        BadFile(yaml: "vm: fast\n", line: 1, column: 5, mentions: ["'vm' must be a mapping"]),
        BadFile(yaml: "vm:\n  network: isolatd\n", line: 2, column: 12, mentions: ["did you mean 'isolated'?"]),
        BadFile(yaml: "vm:\n  allow_host_ports: 5432\n", line: 2, column: 21, mentions: ["must be a list"]),
        BadFile(yaml: "vm:\n  allow_host_ports: [5432, 70000]\n", line: 2, column: 28, mentions: ["between 1 and 65535"]),
        BadFile(yaml: "vm:\n  allow_host_ports: [5432, 5432]\n", line: 2, column: 28, mentions: ["port 5432 is listed twice"]),
        BadFile(
            yaml: "vm:\n  lock_retry: { attempts: 3, initial: 2s, max: 1s }\n", line: 2, column: 48,
            mentions: ["'vm.lock_retry.max'", "must not be smaller than 'initial'"]),
        BadFile(yaml: "vm:\n  lock_retry: { atempts: 3 }\n", line: 2, column: 17, mentions: ["did you mean 'attempts'?"]),
        BadFile(yaml: "log_level: verbose\n", line: 1, column: 12, mentions: ["one of debug, info, warning, error"]),
        BadFile(yaml: "warm_pool: { boot: maybe }\n", line: 1, column: 20, mentions: ["must be true or false", "'maybe'"]),
        BadFile(yaml: "servers:\n  - token: abc\n", line: 2, column: 5, mentions: ["missing required key 'url' in 'servers[0]'"]),
        BadFile(
            yaml: "servers:\n  - url: ftp://ci.example.org\n    token: abc\n", line: 2, column: 10,
            mentions: ["http:// or https:// URL"]),
        BadFile(yaml: "servers:\n  - url: https://ci.example.org\n", line: 2, column: 5, mentions: ["needs a 'token_file'"]),
        BadFile(
            yaml: "servers:\n  - url: https://ci.example.org\n    token: ${NOT_SET_ANYWHERE}\n", line: 3, column: 12,
            mentions: ["environment variable NOT_SET_ANYWHERE, which is not set"]),
        BadFile(
            yaml: "servers:\n  - url: https://ci.example.org\n    token_file: /nonexistent/token\n", line: 3, column: 17,
            mentions: ["token file /nonexistent/token cannot be read"]),
        BadFile(
            yaml: "servers:\n  - url: https://ci.example.org\n    token: a\n    token_file: b\n", line: 4, column: 17,
            mentions: ["either 'token' or 'token_file'"]),
        BadFile(
            yaml: "servers:\n  - url: https://a.example.org\n    token: a\n  - url: https://a.example.org\n    token: b\n",
            line: 4, column: 5, mentions: ["two servers are named 'a.example.org'"]),
        BadFile(
            yaml: "servers:\n  - url: https://ci.example.org\n    token: a\n    type: jenkins\n", line: 4, column: 11,
            mentions: ["one of gitlab"]),
        BadFile(
            yaml: "servers:\n  - url: https://ci.example.org\n    token: a\n    tls: { cert_file: /etc/hostname }\n", line: 4,
            column: 23,
            mentions: ["'cert_file' and 'key_file' go together"]),
        BadFile(
            yaml: "servers:\n  - url: https://ci.example.org\n    token: a\n    tls: { ca_file: /nonexistent/ca.pem }\n", line: 4,
            column: 21,
            mentions: ["/nonexistent/ca.pem does not exist"]),
        BadFile(
            yaml: "servers:\n  url: https://ci.example.org\n", line: 2, column: 3,
            mentions: ["'servers' must be a list, not a mapping"]),
        BadFile(yaml: "metrics: { listen: 9252 }\n", line: 1, column: 20, mentions: ["must be host:port"]),
        BadFile(yaml: "metrics: { listen: myhost:9252 }\n", line: 1, column: 20, mentions: ["must name an IP address"]),
        BadFile(yaml: "metrics: { listen: \"[::zz]:9252\" }\n", line: 1, column: 20, mentions: ["must name an IP address"]),
        BadFile(yaml: "job:\n  log_limit: 0\n", line: 2, column: 14, mentions: ["at least 1KiB"]),
        BadFile(yaml: "name: a\nname: b\n", line: 1, column: 1, mentions: ["duplicate key 'name'"]),
        BadFile(yaml: "vm:\n  bundle: [unclosed\n", line: 3, column: 1, mentions: ["invalid YAML"]),
        BadFile(yaml: "vm:\n\tbundle: x\n", line: 2, column: 1, mentions: ["invalid YAML"]),
    ]

    @Test("every bad file is refused with its file, line, column and what was expected", arguments: badFiles)
    func badFile(_ bad: BadFile) {
        let error = #expect(throws: ConfigurationError.self) {
            try loader().parse(bad.yaml, file: "/etc/mayfly/bad.yaml", baseDirectory: "/etc/mayfly")
        }
        guard let error else { return }
        #expect(error.file == "/etc/mayfly/bad.yaml")
        #expect(error.line == bad.line, "\(error)")
        #expect(error.column == bad.column, "\(error)")
        for mention in bad.mentions { #expect(error.message.contains(mention), "\(error)") }
        #expect(error.description.hasPrefix("/etc/mayfly/bad.yaml:\(bad.line):\(bad.column): "))
    }
}

@Suite("Durations and sizes")
struct DurationAndSizeTests {
    @Test(
        "durations",
        arguments: [
            ("500ms", Duration.milliseconds(500)), ("5s", .seconds(5)), ("3m", .seconds(180)), ("1h", .seconds(3600)),
            ("1h30m", .seconds(5400)), ("0", .zero), ("1.5s", .milliseconds(1500)), ("2d", .seconds(172_800)),
        ])
    func duration(text: String, expected: Duration) throws {
        #expect(try DurationText.parse(text) == expected)
        #expect(try DurationText.parse(DurationText.format(expected)) == expected)
    }

    @Test("bad durations", arguments: ["", "5", "5x", "-1s", "s", "1h-", "ms5"])
    func badDuration(text: String) {
        #expect(throws: DurationText.ParseError.self) { try DurationText.parse(text) }
    }

    @Test(
        "sizes",
        arguments: [
            ("512MiB", UInt64(512 << 20)), ("4GiB", 4 << 30), ("100MB", 100_000_000), ("1024", 1024), ("1.5KiB", 1536), ("0", 0),
        ])
    func size(text: String, expected: UInt64) throws {
        #expect(try ByteSize.parse(text).bytes == expected)
        #expect(try ByteSize.parse(ByteSize(bytes: expected).description).bytes == expected)
    }

    @Test("bad sizes", arguments: ["", "MiB", "12 parsecs", "-1GiB"])
    func badSize(text: String) {
        #expect(throws: ByteSize.ParseError.self) { try ByteSize.parse(text) }
    }
}
