import ArgumentParser
import Foundation
import MayflyAgent

/// `mayfly doctor`: checks the host and prints one line per check with a fix.
struct Doctor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check that this host can run Mayfly's VMs, and say how to fix what is missing.",
        discussion:
            "Uses the configuration file when it exists (for work_dir, accelerator and clone), defaults otherwise. Exits 1 when a check fails."
    )

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        if options.config == MayflyAgent.Configuration.defaultPath && !FileManager.default.fileExists(atPath: options.config) {
            print("config   warn  \(options.config) does not exist; checking with defaults")
        }
        let configuration = try options.loadOrDefaults()
        let checks = await MayflyAgent.Doctor(configuration: configuration).run()
        let width = checks.map(\.name.count).max() ?? 8
        for check in checks {
            let name = check.name.padding(toLength: max(width, 8), withPad: " ", startingAt: 0)
            let status = check.status.rawValue.padding(toLength: 4, withPad: " ", startingAt: 0)
            print("\(name) \(status)  \(check.detail)")
            if let fix = check.fix { print(String(repeating: " ", count: max(width, 8) + 7) + "fix: \(fix)") }
        }
        let status = MayflyAgent.Doctor.exitStatus(checks)
        if status != 0 { throw ExitCode(status) }
    }
}
