import ArgumentParser

/// `mayfly bundle …`: golden bundles.
struct Bundle: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Inspect, verify and import golden VM bundles.", subcommands: [])
}
