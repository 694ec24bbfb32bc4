import ArgumentParser
import MayflyAgent
import MayflyCore

/// `mayfly run`: the daemon that takes jobs from the configured CI servers.
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run as a daemon: take jobs from the configured CI servers and run each in a fresh VM.")

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
        throw UnavailableCommand(
            description:
                "the daemon (job polling from \(configuration.servers.map(\.name).joined(separator: ", "))) is not in this build yet; `mayfly exec` runs one job file"
        )
    }
}
