import ArgumentParser
import MayflyAgent
import MayflyCore
import MayflyGitLab
import MayflyVM

/// The one place where errors become exit statuses (sysexits.h where one fits):
///
/// | status | meaning |
/// | --- | --- |
/// | 0 | success |
/// | 1 | `doctor` found a failing check; `exec`: the job's own status when it fails |
/// | 64 | bad command line (EX_USAGE) |
/// | 65 | a bundle is damaged: bad manifest or files that do not match it (EX_DATAERR) |
/// | 69 | a needed service or host facility is unavailable: VM, accelerator, lock (EX_UNAVAILABLE) |
/// | 70 | an internal error (EX_SOFTWARE) |
/// | 74 | an I/O error on Mayfly's own files (EX_IOERR) |
/// | 78 | the configuration is invalid (EX_CONFIG) |
/// | 130 | interrupted (Ctrl-C) |
struct ExitStatus {
    let code: Int32
    let message: String

    static let usage: Int32 = 64
    static let dataError: Int32 = 65
    static let unavailable: Int32 = 69
    static let software: Int32 = 70
    static let ioError: Int32 = 74
    static let config: Int32 = 78
    static let interrupted: Int32 = 130

    /// `nil` for errors that ArgumentParser reports itself (help, usage, `ExitCode`).
    init?(for error: any Error) {
        switch error {
        case let error as ConfigurationError:
            code = Self.config
            message = error.description
        case let error as VMError:
            switch error {
            case .io: code = Self.ioError
            case .bundle, .bundleManifest: code = Self.dataError
            default: code = Self.unavailable
            }
            message = error.description
        case let error as CommandRunner.Failure:
            code = Self.unavailable
            message = error.description
        case let error as BundleVerificationFailed:
            code = Self.dataError
            message = error.description
        case let error as GitLabError:
            code = Self.unavailable
            message = error.description
        case is CancellationError:
            code = Self.interrupted
            message = "interrupted"
        case is ExitCode, is CleanExit, is ValidationError:
            return nil
        default:
            let described = String(describing: error)
            if described.contains("ArgumentParser") { return nil }
            code = Self.software
            message = described
        }
    }
}
