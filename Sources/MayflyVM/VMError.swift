import MayflyCore

/// What went wrong in the VM layer, with the evidence needed to act on it.
public enum VMError: Error, Sendable, CustomStringConvertible {
    case acceleratorUnavailable(reason: String)
    case cloneStrategyUnavailable(strategy: CloneStrategyChoice, reason: String)
    case cloneInUse(path: String, owner: Int32)
    case io(operation: String, path: String, errno: Int32)
    case bundle(path: String, problem: String)
    case bundleManifest(ConfigurationError)
    case lockUnavailable(LockFailure)
    case qemuFailed(what: String, detail: String)
    case bootTimedOut(after: Duration, serialTail: String)
    case command(executable: String, status: String, stderr: String)
    case networkFailed(what: String, detail: String)

    public var description: String {
        switch self {
        case .acceleratorUnavailable(let reason):
            return "accelerator kvm is not available: \(reason); use accelerator: auto or tcg"
        case .cloneStrategyUnavailable(let strategy, let reason):
            return "clone strategy '\(strategy.rawValue)' does not work here: \(reason)"
        case .cloneInUse(let path, let owner):
            return "clone \(path) belongs to a running agent (pid \(owner)); the same job is already running"
        case .io(let operation, let path, let code):
            return "\(operation) \(path): \(String(cString: strerror(code))) (errno \(code))"
        case .bundle(let path, let problem):
            return "bundle \(path): \(problem)"
        case .bundleManifest(let error):
            return error.description
        case .lockUnavailable(let failure):
            return failure.description
        case .qemuFailed(let what, let detail):
            return "QEMU \(what): \(detail)"
        case .bootTimedOut(let after, let tail):
            let shown = tail.isEmpty ? " (the serial console printed nothing)" : "; last serial output:\n\(tail)"
            return "the guest did not become reachable within \(after)\(shown)"
        case .command(let executable, let status, let stderr):
            return "\(executable) failed (\(status))" + (stderr.isEmpty ? "" : ": \(stderr)")
        case .networkFailed(let what, let detail):
            return "guest network (passt) \(what)" + (detail.isEmpty ? "" : ": \(detail)")
        }
    }
}

#if canImport(Glibc)
    import Glibc
#endif
