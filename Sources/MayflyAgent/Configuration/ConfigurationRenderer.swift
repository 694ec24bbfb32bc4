import MayflyCore
import MayflyHTTP

extension Configuration {
    /// The effective configuration as YAML, every key with its value after defaults, and every
    /// secret shown as `[REDACTED]` with where it came from.
    public func rendered() -> String {
        func quoted(_ text: String) -> String {
            let plain =
                !text.isEmpty && text.allSatisfy { $0.isLetter || $0.isNumber || "-_./:@".contains($0) }
                && !["true", "false", "yes", "no", "null", "on", "off", "~"].contains(text.lowercased())
                && !(text.first?.isNumber ?? false)
            if plain { return text }
            let escaped = text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            return "\"\(escaped)\""
        }
        func duration(_ value: Duration) -> String { DurationText.format(value) }
        var lines: [String] = []
        if let source { lines.append("# effective configuration from \(source)") }
        lines += [
            "name: \(quoted(name))",
            "work_dir: \(quoted(workDirectory))",
            "concurrency: \(concurrency)",
            "shutdown_timeout: \(duration(shutdownTimeout))",
            "log_level: \(logLevel.rawValue)",
            "log_format: \(logFormat.rawValue)",
            "vm:",
            "  bundle: \(vm.bundle.map(quoted) ?? "null")",
            "  cpus: \(vm.cpus.map(String.init) ?? "null  # the bundle's default")",
            "  memory: \(vm.memory.map(\.description) ?? "null  # the bundle's default")",
            "  accelerator: \(vm.accelerator.rawValue)",
            "  clone: \(vm.clone.rawValue)",
            "  grace_period: \(duration(vm.gracePeriod))",
            "  lock_retry: { attempts: \(vm.lockRetry.attempts), initial: \(duration(vm.lockRetry.initial)), max: \(duration(vm.lockRetry.maximum)) }",
            "  boot_timeout: \(duration(vm.bootTimeout))",
            "  network: \(vm.network.mode.rawValue)",
            "  allow_host_ports: [\(vm.network.allowHostPorts.map(String.init).joined(separator: ", "))]",
            "warm_pool: { size: \(warmPool.size), max_age: \(duration(warmPool.maxAge)), boot: \(warmPool.boot) }",
            "job: { timeout: \(duration(job.timeout)), log_limit: \(job.logLimit), spool_retention: \(duration(job.spoolRetention)) }",
        ]
        if servers.isEmpty {
            lines.append("servers: []")
        } else {
            lines.append("servers:")
            for server in servers {
                lines.append("  - name: \(quoted(server.name))")
                lines.append("    type: \(server.kind.rawValue)")
                lines.append("    url: \(quoted(server.url))")
                lines.append("    token: \"[REDACTED]\"  # from \(server.tokenSource)")
                lines.append("    poll_interval: \(duration(server.pollInterval))")
                lines.append("    tls:")
                lines.append("      ca_file: \(server.tls.caFile.map(quoted) ?? "null  # the system's CAs")")
                lines.append("      cert_file: \(server.tls.certFile.map(quoted) ?? "null")")
                lines.append("      key_file: \(server.tls.keyFile.map(quoted) ?? "null")")
                lines.append("      insecure_skip_verify: \(server.tls.insecureSkipVerify)")
                lines.append("    proxy: \(server.proxy.map { quoted(URLRedaction.redact($0)) } ?? "null")")
            }
        }
        lines.append("metrics: { listen: \(metrics.listen.map(quoted) ?? "null") }")
        return lines.joined(separator: "\n") + "\n"
    }
}
