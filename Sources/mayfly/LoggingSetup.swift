import Logging
import MayflyAgent

/// Starts swift-log once for the process, with the configuration's level and format. Only the
/// executable does this; libraries take a `Logger`.
enum LoggingSetup {
    private static let bootstrapped: Void = {
        LoggingSystem.bootstrap { label in MayflyLogHandler(label: label, level: .info, format: .text) }
    }()

    /// A logger for `label` with the configuration's level and format, and its warnings logged.
    static func logger(_ label: String, for configuration: MayflyAgent.Configuration) -> Logger {
        _ = bootstrapped
        let format: MayflyLogHandler.Format = configuration.logFormat == .json ? .json : .text
        var logger = Logger(label: label) { label in
            MayflyLogHandler(label: label, level: configuration.logLevel.swiftLogLevel, format: format)
        }
        logger.logLevel = configuration.logLevel.swiftLogLevel
        return logger
    }
}
