import ArgumentParser
import Foundation
import MayflyAgent

/// The `mayfly` command: parses arguments, runs one subcommand, and turns any error into an
/// exit status in one place (`ExitStatus`).
@main
struct Mayfly: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mayfly",
        abstract: "A CI runner that runs every job in its own short-lived QEMU virtual machine.",
        subcommands: [Run.self, Exec.self, Register.self, Unregister.self, Bundle.self, Doctor.self, Config.self, Version.self]
    )

    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            if let status = ExitStatus(for: error) {
                FileHandle.standardError.write(Data("mayfly: error: \(status.message)\n".utf8))
                Self.exit(withError: ExitCode(status.code))
            }
            Self.exit(withError: error)
        }
    }
}

/// Options shared by every command that reads the configuration file.
struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The configuration file.", valueName: "file"))
    var config: String = MayflyAgent.Configuration.defaultPath

    func load() throws -> MayflyAgent.Configuration {
        try ConfigurationLoader().load(path: config)
    }

    /// The configuration, or the built-in defaults when the default file does not exist (an
    /// explicitly named file must exist).
    func loadOrDefaults() throws -> MayflyAgent.Configuration {
        if config == MayflyAgent.Configuration.defaultPath && !FileManager.default.fileExists(atPath: config) {
            return MayflyAgent.Configuration(name: ProcessInfo.processInfo.hostName)
        }
        return try load()
    }
}
