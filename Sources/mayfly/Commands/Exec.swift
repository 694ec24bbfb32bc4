import ArgumentParser
import Foundation
import Logging
import MayflyAgent
import MayflyCore
import MayflyVM

/// `mayfly exec JOB.yml`: runs one job file in a fresh VM on this machine.
struct Exec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one job file in a fresh clone of a bundle and stream its output.",
        discussion: """
            The job's output goes to standard output, the phases (clone, grace, lock, boot, connect, script, after_script, \
            cleanup) to standard error. Exit status: the script's own status; 124 when the job timed out; 130 when \
            interrupted (Ctrl-C); 69 when Mayfly could not run it (no bundle, clone, lock, boot or SSH failure); 78 for a \
            bad configuration or job file.
            """)

    @OptionGroup var options: ConfigOptions

    @Argument(help: "The job file (YAML: script, after_script, variables, timeout, bundle).")
    var job: String

    @Option(help: ArgumentHelp("A bundle directory or a name under <work_dir>/bundles.", valueName: "name-or-path"))
    var bundle: String?

    @Flag(help: "Log Mayfly's own progress messages too (log_level info).")
    var verbose = false

    static let timedOutStatus: Int32 = 124

    func run() async throws {
        var configuration = try options.loadOrDefaults()
        if !verbose && configuration.logLevel == .info { configuration.logLevel = .warning }
        let logger = LoggingSetup.logger("mayfly.exec", for: configuration)
        var job = try JobFile.load(path: self.job, id: "exec-\(UUID().uuidString.prefix(8).lowercased())")
        if let bundle {
            job.bundle =
                bundle.contains("/") && !bundle.hasPrefix("/")
                ? FileManager.default.currentDirectoryPath + "/" + bundle : bundle
        }

        // Clones left by an exec or agent that died are removed before a new one is made.
        _ = await CloneReaper(workDirectory: configuration.workDirectory, logger: logger).reap()

        let progress = ExecProgress()
        let log = JobLog(sink: StandardOutputSink(), maskedValues: job.maskedValues, limit: configuration.job.logLimit)
        let runner = JobRunner(configuration: configuration, logger: logger)
        let jobToRun = job
        let task = Task { await runner.run(jobToRun, server: "local", log: log) { progress.handle($0) } }
        let watcher = SignalWatcher { signal in
            progress.note("interrupted (signal \(signal)): stopping the VM")
            task.cancel()
        }
        let report = await task.value
        withExtendedLifetime(watcher) {}
        progress.finish()

        switch report.outcome {
        case .exited(0): return
        case .exited(let status): throw ExitCode(status)
        case .timedOut: throw ExitCode(Self.timedOutStatus)
        case .cancelled: throw ExitCode(ExitStatus.interrupted)
        case .systemFailure: throw ExitCode(ExitStatus.unavailable)
        }
    }
}
