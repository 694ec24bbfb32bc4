import ArgumentParser
import Foundation
import MayflyAgent

/// `mayfly config …`: commands about the configuration file.
struct Config: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Work with the configuration file.", subcommands: [Check.self])

    /// `mayfly config check`: validates the file and prints the effective configuration.
    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate the configuration and print it with defaults filled in and secrets redacted.",
            discussion: "Exits 0 when the file is valid, 78 (EX_CONFIG) with file:line:column and the problem otherwise.")

        @OptionGroup var options: ConfigOptions

        func run() throws {
            let configuration = try options.load()
            var warnings = configuration.warnings
            // A bundle that is not there (yet) is worth knowing, but may be installed later.
            if configuration.vm.bundle != nil {
                do { _ = try configuration.locateBundle() } catch { warnings.append(error) }
            }
            for warning in warnings {
                FileHandle.standardError.write(Data("mayfly: warning: \(warning)\n".utf8))
            }
            print(configuration.rendered(), terminator: "")
        }
    }
}
