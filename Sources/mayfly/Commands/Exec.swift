import ArgumentParser
import MayflyAgent

/// `mayfly exec JOB.yml`: runs one job file in a fresh VM on this machine.
struct Exec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one job file in a fresh clone of a bundle and stream its output.")

    @OptionGroup var options: ConfigOptions

    @Argument(help: "The job file (YAML: script, after_script, variables, timeout, bundle).")
    var job: String

    @Option(help: ArgumentHelp("A bundle directory or a name under <work_dir>/bundles.", valueName: "name-or-path"))
    var bundle: String?

    func run() async throws {
        _ = try options.load()
        throw UnavailableCommand(description: "running jobs in a VM is not in this build yet")
    }
}
