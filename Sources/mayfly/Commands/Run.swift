import ArgumentParser
import Foundation
import Logging
import MayflyAgent
import MayflyCore
import MayflyGitLab
import MayflyVM
import Metrics
import Prometheus
import ServiceLifecycle

/// `mayfly run`: the daemon that takes jobs from the configured CI servers.
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run as a daemon: take jobs from the configured CI servers and run each in a fresh VM.",
        discussion: """
            SIGTERM, SIGQUIT or SIGINT: stop asking for jobs and let running jobs finish, at most shutdown_timeout; then \
            they are stopped. A second SIGINT stops them at once. Stopped jobs are reported failed with a line in their \
            log; their VMs and clones are removed. SIGHUP reloads the configuration file (an invalid one is refused and \
            the old configuration kept). With systemd (Type=notify) readiness and stopping are reported.
            """)

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let configuration = try options.load()
        let logger = LoggingSetup.logger("mayfly", for: configuration)
        for warning in configuration.warnings { logger.warning("\(warning)") }
        guard !configuration.servers.isEmpty else {
            throw ConfigurationError(
                file: options.config, line: 0, column: 0,
                message: "'servers' lists no CI server; add one (or use `mayfly register`)")
        }
        _ = try configuration.locateBundle()
        try FileManager.default.createDirectory(atPath: configuration.workDirectory, withIntermediateDirectories: true)
        let systemID = try SystemID.load(workDirectory: configuration.workDirectory)

        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))

        let makeSources: @Sendable (MayflyAgent.Configuration) -> [any JobSource] = { configuration in
            configuration.servers.map { server in
                GitLabJobSource(
                    settings: .init(
                        name: server.name, url: server.url, token: server.token, tls: server.tls, proxy: server.proxy,
                        pollInterval: server.pollInterval, spoolDirectory: configuration.workDirectory + "/spool",
                        systemID: systemID),
                    logger: logger)
            }
        }
        let daemon = RunnerDaemon(configuration: configuration, sources: makeSources(configuration), logger: logger)
        var services: [any Service] = [
            RunnerService(daemon: daemon, logger: logger),
            ReloadService(path: options.config, daemon: daemon, logger: logger, makeSources: makeSources),
        ]
        if let listen = configuration.metrics.listen {
            services.append(
                MetricsService(server: try MetricsServer(listen: listen, registry: registry, logger: logger) { daemon.health() }))
        }
        var groupConfiguration = ServiceGroupConfiguration(
            services: services.map {
                ServiceGroupConfiguration.ServiceConfiguration(service: $0, successTerminationBehavior: .gracefullyShutdownGroup)
            },
            gracefulShutdownSignals: [.sigterm, .sigquit, .sigint], logger: logger)
        groupConfiguration.maximumGracefulShutdownDuration = configuration.shutdownTimeout
        groupConfiguration.maximumCancellationDuration = .seconds(120)
        try await ServiceGroup(configuration: groupConfiguration).run()
    }
}
