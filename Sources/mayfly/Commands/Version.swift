import ArgumentParser
import MayflyCore

/// `mayfly version`: prints the version.
struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print Mayfly's version.")

    func run() {
        print("mayfly \(MayflyVersion.current)")
    }
}
