import Foundation
import Logging
import MayflyCore
import Prometheus
import ServiceLifecycle
import UnixSignals

/// The daemon's job-taking as a swift-service-lifecycle `Service`: graceful shutdown stops job
/// requests and lets running jobs finish; cancellation (the group's shutdown timeout, or a
/// second SIGINT) stops the running jobs. It ends when no job is left.
public struct RunnerService: Service {
    let daemon: RunnerDaemon
    let notifier: SystemdNotifier
    let logger: Logger

    public init(daemon: RunnerDaemon, notifier: SystemdNotifier = SystemdNotifier(), logger: Logger) {
        self.daemon = daemon
        self.notifier = notifier
        self.logger = logger
    }

    public func run() async throws {
        let daemon = self.daemon
        let notifier = self.notifier
        // A second SIGINT means "stop the jobs now" (the first one is a graceful shutdown).
        let interrupts = Task {
            var count = 0
            for await _ in await UnixSignalsSequence(trapping: .sigint) {
                count += 1
                if count >= 2 {
                    logger.warning("second interrupt: stopping running jobs now")
                    daemon.cancelRunningJobs()
                }
            }
        }
        defer { interrupts.cancel() }
        notifier.notify("READY=1\nSTATUS=taking jobs")
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await daemon.run()
            } onGracefulShutdown: {
                notifier.notify("STOPPING=1\nSTATUS=finishing running jobs")
                daemon.stopAcceptingJobs()
            }
        } onCancel: {
            daemon.cancelRunningJobs()
        }
    }
}

/// Reloads the configuration on SIGHUP: a valid file is applied (concurrency, servers, poll
/// intervals, job and VM settings for new jobs) without touching running jobs; an invalid one is
/// refused with its error logged, and the old configuration stays.
public struct ReloadService: Service {
    let path: String
    let daemon: RunnerDaemon
    let makeSources: @Sendable (Configuration) -> [any JobSource]
    let notifier: SystemdNotifier
    let logger: Logger

    public init(
        path: String, daemon: RunnerDaemon, notifier: SystemdNotifier = SystemdNotifier(), logger: Logger,
        makeSources: @escaping @Sendable (Configuration) -> [any JobSource]
    ) {
        self.path = path
        self.daemon = daemon
        self.makeSources = makeSources
        self.notifier = notifier
        self.logger = logger
    }

    public func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            notifier.notify("RELOADING=1")
            do {
                let configuration = try ConfigurationLoader().load(path: path)
                for warning in configuration.warnings { logger.warning("\(warning)") }
                daemon.reconfigure(configuration, sources: makeSources(configuration))
            } catch {
                logger.error("SIGHUP: the configuration was not reloaded, the old one stays: \(error)")
            }
            notifier.notify("READY=1")
        }
    }
}

/// Serves `/metrics` and `/health` while the group runs.
public struct MetricsService: Service {
    let server: MetricsServer

    public init(server: MetricsServer) { self.server = server }

    public func run() async throws {
        try server.start()
        await withGracefulShutdownHandler {
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                try? await Task.sleep(for: .milliseconds(200))
            }
        } onGracefulShutdown: {
            server.stop()
        }
        server.stop()
    }
}

/// Tells systemd about readiness and shutdown (`Type=notify`): datagrams to `NOTIFY_SOCKET`.
/// Does nothing when Mayfly is not started by systemd.
public struct SystemdNotifier: Sendable {
    let socketPath: String?

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        socketPath = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
    }

    public func notify(_ state: String) {
        guard let socketPath else { return }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        // An abstract socket ("@name") starts with a NUL byte.
        var bytes = Array(socketPath.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let message = Array(state.utf8)
        _ = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddr in
                message.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sockaddr, length) }
            }
        }
    }
}
