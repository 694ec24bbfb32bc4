import ArgumentParser
import Foundation
import Logging
import MayflyAgent
import MayflyCore
import MayflyGitLab
import MayflyVM

/// `mayfly run`: the daemon that takes jobs from the configured CI servers.
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run as a daemon: take jobs from the configured CI servers and run each in a fresh VM.",
        discussion: """
            SIGTERM or SIGQUIT: stop asking for jobs, let running jobs finish (at most shutdown_timeout), then stop them. \
            SIGINT: the same; a second SIGINT stops running jobs at once. Stopped jobs are reported failed with a line in \
            their log, and their VMs and clones are removed.
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
        if configuration.vm.bundle == nil {
            throw ConfigurationError(
                file: options.config, line: 0, column: 0, message: "'vm.bundle' is not set: jobs from a CI server need it")
        }
        _ = try BundleDirectory.locate(configuration.vm.bundle!, bundlesDirectory: configuration.bundlesDirectory)
        try FileManager.default.createDirectory(atPath: configuration.workDirectory, withIntermediateDirectories: true)
        let systemID = try SystemID.load(workDirectory: configuration.workDirectory)

        let sources: [any JobSource] = configuration.servers.map { server in
            GitLabJobSource(
                settings: .init(
                    name: server.name, url: server.url, token: server.token, tls: server.tls, proxy: server.proxy,
                    pollInterval: server.pollInterval, spoolDirectory: configuration.workDirectory + "/spool", systemID: systemID),
                logger: logger)
        }
        let daemon = RunnerDaemon(
            configuration: configuration, sources: sources, runner: JobRunner(configuration: configuration, logger: logger),
            logger: logger)
        let shutdownTimeout = configuration.shutdownTimeout
        let interrupts = InterruptCounter()
        let watcher = SignalWatcher(signals: [SIGTERM, SIGQUIT, SIGINT]) { signal in
            let count = signal == SIGINT ? interrupts.increment() : 1
            if count >= 2 {
                logger.warning("second interrupt: stopping running jobs now")
                daemon.cancelRunningJobs()
                return
            }
            logger.info(
                "signal \(signal): finishing running jobs (at most \(DurationText.format(shutdownTimeout))), taking no new ones")
            daemon.stopAcceptingJobs()
            Task {
                try? await Task.sleep(for: shutdownTimeout)
                if daemon.runningJobs > 0 {
                    logger.warning("shutdown_timeout passed: stopping running jobs")
                    daemon.cancelRunningJobs()
                }
            }
        }
        await daemon.run()
        withExtendedLifetime(watcher) {}
    }
}

/// Counts SIGINTs (the second one means "stop now").
final class InterruptCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func increment() -> Int {
        lock.withLock {
            count += 1
            return count
        }
    }
}
