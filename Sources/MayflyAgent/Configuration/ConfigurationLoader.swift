import Foundation
import MayflyCore
import MayflyHTTP
import MayflyVM

/// Reads a configuration file into a `Configuration`, or throws the first problem found with
/// its file, line and column. Relative paths in the file are resolved against the file's own
/// directory. `${NAME}` in any value is replaced by the environment variable NAME.
public struct ConfigurationLoader: Sendable {
    public var environment: [String: String]
    public var hostName: String

    public init(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        hostName: String = ProcessInfo.processInfo.hostName
    ) {
        self.environment = environment
        self.hostName = hostName
    }

    static let topLevelKeys = [
        "name", "work_dir", "concurrency", "shutdown_timeout", "log_level", "log_format", "vm", "warm_pool", "job",
        "servers", "metrics",
    ]
    static let vmKeys = [
        "bundle", "cpus", "memory", "accelerator", "clone", "grace_period", "lock_retry", "boot_timeout", "network",
        "allow_host_ports",
    ]
    static let lockRetryKeys = ["attempts", "initial", "max"]
    static let warmPoolKeys = ["size", "max_age", "boot"]
    static let jobKeys = ["timeout", "log_limit", "spool_retention"]
    static let serverKeys = ["name", "type", "url", "token", "token_file", "poll_interval", "tls", "proxy"]
    static let tlsKeys = ["ca_file", "cert_file", "key_file", "insecure_skip_verify"]
    static let metricsKeys = ["listen"]

    /// Reads the file at `path`.
    public func load(path: String) throws(ConfigurationError) -> Configuration {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            let reason = FileManager.default.fileExists(atPath: path) ? "cannot be read" : "does not exist"
            throw ConfigurationError(
                file: path, line: 0, column: 0,
                message: "\(reason); pass another file with --config, or start from config/mayfly.example.yaml")
        }
        let directory = (path as NSString).deletingLastPathComponent
        return try parse(text, file: path, baseDirectory: directory.isEmpty ? "." : directory)
    }

    /// Reads `text` as if it were the file `file` in `baseDirectory`.
    public func parse(_ text: String, file: String, baseDirectory: String) throws(ConfigurationError) -> Configuration {
        var configuration = Configuration(name: hostName)
        configuration.source = file
        guard let root = try YAMLValue.parse(text, file: file, environment: environment), !root.isNull else {
            return configuration
        }
        let top = try root.mapping(allowed: Self.topLevelKeys)
        func path(_ value: YAMLValue) throws(ConfigurationError) -> String {
            try resolve(value.string(), against: baseDirectory, at: value)
        }

        if let value = top["name"] {
            configuration.name = try value.string()
            if configuration.name.isEmpty { throw value.error("'name' must not be empty") }
        }
        if let value = top["work_dir"] { configuration.workDirectory = try path(value) }
        if let value = top["concurrency"] { configuration.concurrency = try value.int(in: 1...256) }
        if let value = top["shutdown_timeout"] { configuration.shutdownTimeout = try value.duration() }
        if let value = top["log_level"] { configuration.logLevel = try value.choice(Configuration.LogLevel.self) }
        if let value = top["log_format"] { configuration.logFormat = try value.choice(Configuration.LogFormat.self) }

        if let value = top["vm"] { configuration.vm = try readVM(value, baseDirectory: baseDirectory) }
        if let value = top["warm_pool"] {
            let section = try value.mapping(allowed: Self.warmPoolKeys)
            if let size = section["size"] { configuration.warmPool.size = try size.int(in: 0...64) }
            if let maxAge = section["max_age"] { configuration.warmPool.maxAge = try maxAge.duration(atLeast: .seconds(1)) }
            if let boot = section["boot"] { configuration.warmPool.boot = try boot.bool() }
        }
        if let value = top["job"] {
            let section = try value.mapping(allowed: Self.jobKeys)
            if let timeout = section["timeout"] { configuration.job.timeout = try timeout.duration(atLeast: .seconds(1)) }
            if let limit = section["log_limit"] { configuration.job.logLimit = try limit.size(atLeast: .kibibytes(1)) }
            if let retention = section["spool_retention"] {
                configuration.job.spoolRetention = try retention.duration(atLeast: .seconds(60))
            }
        }
        if let value = top["servers"] {
            var names: [String: YAMLValue] = [:]
            for item in try value.sequence() {
                let (server, warnings) = try readServer(item, baseDirectory: baseDirectory)
                if let earlier = names[server.name] {
                    throw item.error(
                        "two servers are named '\(server.name)' (the other is at line \(earlier.line)); give each a distinct 'name'"
                    )
                }
                names[server.name] = item
                configuration.servers.append(server)
                configuration.warnings += warnings
            }
        }
        if let value = top["metrics"] {
            let section = try value.mapping(allowed: Self.metricsKeys)
            if let listen = section["listen"] {
                let address = try listen.string()
                try validateListenAddress(address, at: listen)
                configuration.metrics.listen = address
            }
        }
        return configuration
    }

    private func readVM(_ value: YAMLValue, baseDirectory: String) throws(ConfigurationError) -> VMSection {
        var vm = VMSection()
        let section = try value.mapping(allowed: Self.vmKeys)
        if let bundle = section["bundle"] {
            let text = try bundle.string()
            if text.isEmpty { throw bundle.error("'vm.bundle' must not be empty") }
            // A bare name means a bundle under <work_dir>/bundles; anything with a slash is a path.
            vm.bundle = text.contains("/") ? try resolve(text, against: baseDirectory, at: bundle) : text
            vm.bundleSource = (bundle.line, bundle.column)
        }
        if let cpus = section["cpus"] { vm.cpus = try cpus.int(in: 1...256) }
        if let memory = section["memory"] { vm.memory = try memory.size(atLeast: .mebibytes(64)) }
        if let accelerator = section["accelerator"] { vm.accelerator = try accelerator.choice(AcceleratorChoice.self) }
        if let clone = section["clone"] { vm.clone = try clone.choice(CloneStrategyChoice.self) }
        if let grace = section["grace_period"] { vm.gracePeriod = try grace.duration() }
        if let boot = section["boot_timeout"] { vm.bootTimeout = try boot.duration(atLeast: .seconds(1)) }
        if let network = section["network"] { vm.network.mode = try network.choice(GuestNetwork.Mode.self) }
        if let ports = section["allow_host_ports"] {
            var seen = Set<Int>()
            for port in try ports.sequence() {
                let number = try port.int(in: 1...65535)
                guard seen.insert(number).inserted else { throw port.error("port \(number) is listed twice") }
                vm.network.allowHostPorts.append(number)
            }
        }
        if let retry = section["lock_retry"] {
            let retrySection = try retry.mapping(allowed: Self.lockRetryKeys)
            var policy = LockRetryPolicy()
            if let attempts = retrySection["attempts"] { policy.attempts = try attempts.int(in: 1...100) }
            if let initial = retrySection["initial"] { policy.initial = try initial.duration(atLeast: .milliseconds(1)) }
            if let maximum = retrySection["max"] {
                policy.maximum = try maximum.duration(atLeast: .milliseconds(1))
                if policy.maximum < policy.initial {
                    throw maximum.error(
                        "'vm.lock_retry.max' (\(DurationText.format(policy.maximum))) must not be smaller than 'initial' (\(DurationText.format(policy.initial)))"
                    )
                }
            } else {
                policy.maximum = max(policy.maximum, policy.initial)
            }
            vm.lockRetry = policy
        }
        return vm
    }

    private func readServer(_ item: YAMLValue, baseDirectory: String) throws(ConfigurationError) -> (
        ServerSection, [ConfigurationError]
    ) {
        var warnings: [ConfigurationError] = []
        let section = try item.mapping(allowed: Self.serverKeys)
        let kind =
            try section["type"].map { value throws(ConfigurationError) in try value.choice(ServerSection.Kind.self) } ?? .gitlab
        let urlValue = try section.required("url")
        let url = try urlValue.string()
        guard let parsed = URL(string: url), let scheme = parsed.scheme?.lowercased(), ["http", "https"].contains(scheme),
            let host = parsed.host, !host.isEmpty
        else {
            throw urlValue.error("'\(urlValue.path)' must be an http:// or https:// URL with a host, not '\(url)'")
        }
        if parsed.user != nil || parsed.password != nil {
            throw urlValue.error("'\(urlValue.path)' must not carry credentials; use token_file")
        }
        if scheme == "http" && !["127.0.0.1", "localhost", "::1"].contains(host) {
            warnings.append(
                urlValue.error("'\(urlValue.path)' uses plain http: the runner token crosses the network unencrypted"))
        }
        let name = try section["name"].map { value throws(ConfigurationError) in try value.string() } ?? host

        let token: Secret
        let tokenSource: String
        switch (section["token"], section["token_file"]) {
        case (.some(let inline), .some(let file)):
            throw file.error(
                "give either 'token' or 'token_file' for server '\(name)', not both (the other is at line \(inline.line))")
        case (.none, .none):
            throw section.owner.error(
                "server '\(name)' needs a 'token_file' (or 'token: ${ENV_VAR}'); `mayfly register` writes one")
        case (.some(let inline), .none):
            let raw: String
            if case .scalar(let scalar) = inline.node { raw = scalar.string } else { raw = "" }
            let value = try inline.string()
            if value.isEmpty { throw inline.error("'\(inline.path)' is empty") }
            token = Secret(value)
            if raw.contains("${") {
                tokenSource = "environment"
            } else {
                tokenSource = "inline"
                warnings.append(
                    inline.error("'\(inline.path)' holds the token inline; prefer token_file (mode 0600) or ${ENV_VAR}"))
            }
        case (.none, .some(let file)):
            let path = try resolve(file.string(), against: baseDirectory, at: file)
            guard let data = FileManager.default.contents(atPath: path) else {
                throw file.error("token file \(path) cannot be read")
            }
            let value = String(decoding: data, as: UTF8.self).trimmingWhitespace()
            if value.isEmpty { throw file.error("token file \(path) is empty") }
            if value.contains("\n") { throw file.error("token file \(path) must hold one token on one line") }
            if let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                let mode = attributes[.posixPermissions] as? Int, mode & 0o077 != 0
            {
                warnings.append(
                    file.error("token file \(path) can be read by other users (mode \(String(mode, radix: 8))); chmod 600 it"))
            }
            token = Secret(value)
            tokenSource = path
        }

        var server = ServerSection(name: name, kind: kind, url: url, token: token, tokenSource: tokenSource)
        if let poll = section["poll_interval"] { server.pollInterval = try poll.duration(atLeast: .milliseconds(100)) }
        if let proxy = section["proxy"] {
            let text = try proxy.string()
            guard let proxyURL = URL(string: text), let proxyScheme = proxyURL.scheme, proxyURL.host != nil,
                ["http", "https", "socks5", "socks5h"].contains(proxyScheme.lowercased())
            else {
                throw proxy.error("'\(proxy.path)' must be a URL such as http://proxy:3128, not '\(text)'")
            }
            server.proxy = text
        }
        if let tlsValue = section["tls"] {
            let tls = try tlsValue.mapping(allowed: Self.tlsKeys)
            func existingFile(_ key: String) throws(ConfigurationError) -> String? {
                guard let value = tls[key] else { return nil }
                let path = try resolve(value.string(), against: baseDirectory, at: value)
                guard FileManager.default.isReadableFile(atPath: path) else {
                    throw value.error("'\(value.path)': \(path) does not exist or cannot be read")
                }
                return path
            }
            server.tls.caFile = try existingFile("ca_file")
            server.tls.certFile = try existingFile("cert_file")
            server.tls.keyFile = try existingFile("key_file")
            if (server.tls.certFile == nil) != (server.tls.keyFile == nil) {
                let present = tls["cert_file"] ?? tls["key_file"]!
                throw present.error("'cert_file' and 'key_file' go together: give both for a client certificate, or neither")
            }
            if let insecure = tls["insecure_skip_verify"] {
                server.tls.insecureSkipVerify = try insecure.bool()
                if server.tls.insecureSkipVerify {
                    warnings.append(
                        insecure.error("TLS verification is off for server '\(name)': anyone on the path can read its tokens"))
                }
            }
        }
        return (server, warnings)
    }

    private func resolve(_ path: String, against base: String, at value: YAMLValue) throws(ConfigurationError) -> String {
        if path.isEmpty { throw value.error("'\(value.path)' must not be empty") }
        let absolute =
            path.hasPrefix("/")
            ? path : (base.hasPrefix("/") ? base : FileManager.default.currentDirectoryPath + "/" + base) + "/" + path
        return (absolute as NSString).standardizingPath
    }

    private func validateListenAddress(_ address: String, at value: YAMLValue) throws(ConfigurationError) {
        switch ListenAddress.parse(address) {
        case .success: return
        case .failure(.notHostPort):
            throw value.error("'\(value.path)' must be host:port, such as 127.0.0.1:9252, not '\(address)'")
        case .failure(.badPort):
            throw value.error("'\(value.path)' must be host:port with a port from 0 (any free one) to 65535, not '\(address)'")
        case .failure(.notAnAddress(let host)):
            throw value.error(
                "'\(value.path)' must name an IP address or localhost (such as 127.0.0.1:9252 or [::1]:9252), not '\(host)'")
        }
    }
}
