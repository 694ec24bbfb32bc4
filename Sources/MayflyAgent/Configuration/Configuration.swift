import MayflyCore
import MayflyHTTP
import MayflyVM

/// Mayfly's whole configuration, as read from one YAML file. Each section is a value with named
/// defaults; `docs/configuration.md` documents every key.
public struct Configuration: Sendable {
    public static let defaultPath = "/etc/mayfly/mayfly.yaml"
    public static let defaultWorkDirectory = "/var/lib/mayfly"
    public static let defaultConcurrency = 1
    public static let defaultShutdownTimeout: Duration = .seconds(30 * 60)

    /// The file it was read from, or `nil` for built-in defaults.
    public var source: String?
    /// How this runner shows itself to CI servers; the host name by default.
    public var name: String
    /// Where clones, spool and state live.
    public var workDirectory: String
    public var concurrency: Int
    public var shutdownTimeout: Duration
    public var logLevel: LogLevel
    public var logFormat: LogFormat
    public var vm: VMSection
    public var warmPool: WarmPoolSection
    public var job: JobSection
    public var servers: [ServerSection]
    public var metrics: MetricsSection
    /// Things that are allowed but unwise (an inline token, verification off), with where.
    public var warnings: [ConfigurationError]

    /// Finds `vm.bundle`; a missing or broken bundle is a configuration error at the line that
    /// names it (the file alone when the key is missing).
    public func locateBundle() throws(ConfigurationError) -> BundleDirectory {
        let file = source ?? Configuration.defaultPath
        guard let bundle = vm.bundle else {
            throw ConfigurationError(
                file: file, line: 0, column: 0, message: "'vm.bundle' is not set: jobs from a CI server need it")
        }
        do {
            return try BundleDirectory.locate(bundle, bundlesDirectory: bundlesDirectory)
        } catch {
            throw ConfigurationError(
                file: file, line: vm.bundleSource?.line ?? 0, column: vm.bundleSource?.column ?? 0,
                message: "'vm.bundle': \(error)")
        }
    }

    public init(name: String) {
        source = nil
        self.name = name
        workDirectory = Self.defaultWorkDirectory
        concurrency = Self.defaultConcurrency
        shutdownTimeout = Self.defaultShutdownTimeout
        logLevel = .info
        logFormat = .text
        vm = VMSection()
        warmPool = WarmPoolSection()
        job = JobSection()
        servers = []
        metrics = MetricsSection()
        warnings = []
    }

    /// The directory that holds golden bundles by name.
    public var bundlesDirectory: String { workDirectory + "/bundles" }

    public enum LogLevel: String, Sendable, CaseIterable {
        case debug, info, warning, error
    }

    public enum LogFormat: String, Sendable, CaseIterable {
        case text, json
    }
}

/// `vm:` — how each job's virtual machine is made.
public struct VMSection: Sendable {
    public static let defaultGracePeriod: Duration = .seconds(5)
    public static let defaultBootTimeout: Duration = .seconds(180)

    /// A bundle directory, or the name of one under `<work_dir>/bundles`.
    public var bundle: String?
    /// Where `bundle` was set (line, column), for errors about the bundle it names.
    public var bundleSource: (line: Int, column: Int)?
    /// `nil`: the bundle's default.
    public var cpus: Int?
    /// `nil`: the bundle's default.
    public var memory: ByteSize?
    public var accelerator: AcceleratorChoice = .auto
    public var clone: CloneStrategyChoice = .auto
    /// Counted from the clone's creation; a clone made earlier boots at once.
    public var gracePeriod: Duration = defaultGracePeriod
    public var lockRetry = LockRetryPolicy()
    public var bootTimeout: Duration = defaultBootTimeout
    /// `network` (isolated | user) and `allow_host_ports`.
    public var network = GuestNetwork()

    public init() {}
}

/// `warm_pool:` — clones (optionally booted) kept ready ahead of jobs.
public struct WarmPoolSection: Sendable {
    public static let defaultMaxAge: Duration = .seconds(30 * 60)

    /// Clones kept ready per bundle; 0 turns the pool off.
    public var size: Int = 0
    public var maxAge: Duration = defaultMaxAge
    public var boot: Bool = false

    public init() {}
}

/// `job:` — limits applied to every job.
public struct JobSection: Sendable {
    public static let defaultTimeout: Duration = .seconds(3600)
    public static let defaultLogLimit = ByteSize.mebibytes(100)
    public static let defaultSpoolRetention: Duration = .seconds(7 * 86400)

    /// Upper bound; a smaller timeout from the server or the job file wins.
    public var timeout: Duration = defaultTimeout
    public var logLimit: ByteSize = defaultLogLimit
    /// How long a job whose result could not be delivered (server unreachable) is kept and retried.
    public var spoolRetention: Duration = defaultSpoolRetention

    public init() {}
}

/// One entry of `servers:` — a CI server this runner takes jobs from.
public struct ServerSection: Sendable {
    public static let defaultPollInterval: Duration = .seconds(3)

    public enum Kind: String, Sendable, CaseIterable {
        case gitlab
    }

    public var name: String
    public var kind: Kind
    public var url: String
    public var token: Secret
    /// Where the token came from (`token_file` path, `environment`, or `inline`), for reports.
    public var tokenSource: String
    public var pollInterval: Duration
    public var tls: TLSOptions
    public var proxy: String?

    public init(
        name: String, kind: Kind, url: String, token: Secret, tokenSource: String,
        pollInterval: Duration = defaultPollInterval, tls: TLSOptions = TLSOptions(), proxy: String? = nil
    ) {
        self.name = name
        self.kind = kind
        self.url = url
        self.token = token
        self.tokenSource = tokenSource
        self.pollInterval = pollInterval
        self.tls = tls
        self.proxy = proxy
    }
}

/// `metrics:` — the local Prometheus and health endpoint.
public struct MetricsSection: Sendable {
    /// `host:port`; `nil` turns the endpoint off.
    public var listen: String?

    public init(listen: String? = nil) { self.listen = listen }
}
