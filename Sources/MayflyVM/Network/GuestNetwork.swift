import Foundation
import MayflyCore

/// How a guest reaches networks; the agent fills it from `vm.network` and `vm.allow_host_ports`.
public struct GuestNetwork: Sendable, Equatable {
    public enum Mode: String, Sendable, CaseIterable {
        /// passt with the gateway not mapped to the host: the guest reaches the outside world
        /// but nothing listening only on the host's loopback (the agent's metrics, a database).
        case isolated
        /// QEMU's built-in user network: the gateway (10.0.2.2) is the host's 127.0.0.1, so a
        /// job can reach every service on the host's loopback.
        case user
    }

    public var mode: Mode = .isolated
    /// Host loopback ports a job may use anyway. Each appears on the guest's own 127.0.0.1 at the
    /// same number, forwarded over the SSH connection that runs the job's scripts.
    public var allowHostPorts: [Int] = []
    public var passtExecutable = "passt"

    /// The addressing both backends give the guest (QEMU's user-network defaults), so an image
    /// with a static configuration works with either. DNS differs: QEMU's user network answers
    /// at 10.0.2.3, passt hands out the host's own resolvers over DHCP.
    public static let guestAddress = "10.0.2.15"
    public static let prefixLength = 24
    public static let gateway = "10.0.2.2"
    /// The NIC that carries the guest's own traffic (the only one with `user`).
    public static let uplinkMAC = "52:54:00:12:34:56"
    /// With `isolated`, the second NIC: SSH from the agent comes in here (QEMU's user network,
    /// restricted so that nothing the guest starts leaves through it). No route goes through it.
    public static let controlMAC = "52:54:00:12:34:57"
    public static let control = (network: "10.0.3.0/24", host: "10.0.3.2", guest: "10.0.3.15", prefixLength: 24)

    public init(mode: Mode = .isolated, allowHostPorts: [Int] = []) {
        self.mode = mode
        self.allowHostPorts = allowHostPorts
    }
}

/// Owns one passt process: the guest's way out, started before its QEMU and stopped after it.
/// passt gives the guest the addresses of `GuestNetwork` and the host's resolvers over DHCP,
/// and (`--no-map-gw`) does not turn connections to the gateway into connections to the host's
/// loopback. It forwards nothing inbound: SSH comes in
/// on the guest's second NIC (Debian 12's passt drops inbound connections to a guest). passt
/// drops to `nobody` when started by root, so its socket lives in a directory of its own that
/// `nobody` may write.
public final class PasstProcess: Sendable {
    public let socketPath: String
    private let process: SupervisedProcess

    public var pid: Int32 { process.pid }
    public var identity: ProcessIdentity { process.identity }
    public var hasExited: Bool { process.hasExited }

    private init(socketPath: String, process: SupervisedProcess) {
        self.socketPath = socketPath
        self.process = process
    }

    /// passt's arguments (without the executable).
    public static func arguments(socketPath: String, nameservers: [String] = hostNameservers()) -> [String] {
        var arguments = [
            "--foreground", "--quiet",
            "--socket", socketPath,
            "--address", GuestNetwork.guestAddress, "--netmask", "\(GuestNetwork.prefixLength)",
            "--gateway", GuestNetwork.gateway,
            "--no-map-gw",
            "--tcp-ports", "none", "--udp-ports", "none",
        ]
        for nameserver in nameservers { arguments += ["--dns", nameserver] }
        return arguments
    }

    /// Starts passt with its socket in `directory` (created here; handed to `nobody` when we are
    /// root) and waits until the socket listens.
    public static func start(
        directory: String, executable: String = "passt",
        timeout: Duration = .seconds(10)
    ) async throws(VMError) -> PasstProcess {
        guard ExecutableLookup.find(executable) != nil else {
            throw .networkFailed(
                what: "is not installed",
                detail:
                    "'\(executable)' is not on PATH; install the passt package, or set vm.network: user to let jobs reach the host's loopback"
            )
        }
        if mkdir(directory, 0o700) != 0 && errno != EEXIST { throw .io(operation: "create", path: directory, errno: errno) }
        if geteuid() == 0, let nobody = getpwnam("nobody") {
            if let closed = firstUnsearchableParent(of: directory) {
                throw .networkFailed(
                    what: "cannot reach its socket directory",
                    detail:
                        "passt runs as nobody, and \(closed) is not searchable by others (chmod o+x it, or use another runtime directory)"
                )
            }
            guard chown(directory, nobody.pointee.pw_uid, nobody.pointee.pw_gid) == 0 else {
                throw .io(operation: "hand to nobody (for passt)", path: directory, errno: errno)
            }
        }
        let socketPath = directory + "/passt.sock"
        let spawned: SupervisedProcess
        do {
            spawned = try await SupervisedProcess.spawn(
                executable, arguments: arguments(socketPath: socketPath))
        } catch {
            throw .networkFailed(what: "could not be started", detail: error.description)
        }
        let passt = PasstProcess(socketPath: socketPath, process: spawned)
        let readiness: SupervisedProcess.Readiness
        do {
            readiness = try await spawned.waitUntilReady(timeout: timeout, interval: .milliseconds(10)) {
                await BlockingWork.run { UnixSocketTable.isListening(socketPath) }
            }
        } catch {
            await passt.stop()
            throw .networkFailed(what: "was stopped while starting", detail: "the job was cancelled")
        }
        switch readiness {
        case .ready:
            return passt
        case .exited(let reason):
            throw .networkFailed(what: "exited at start (\(reason))", detail: passt.standardErrorSummary)
        case .timedOut:
            await passt.stop()
            throw .networkFailed(
                what: "did not listen on \(socketPath) within \(DurationText.format(timeout))",
                detail: passt.standardErrorSummary)
        }
    }

    /// The resolvers the guest is told about (DHCP), when passt's own choice (the host's
    /// `/etc/resolv.conf`) would not work: a resolver on the host's loopback (systemd-resolved's
    /// 127.0.0.53, a local dnsmasq) is out of the guest's reach, so systemd-resolved's upstream
    /// servers are named instead. Empty: passt's default. (Debian 12's passt cannot both tell the
    /// guest a stand-in address and forward it, so the guest talks to real resolvers.)
    public static func hostNameservers(
        resolvConf: String = "/etc/resolv.conf", resolvedConf: String = "/run/systemd/resolve/resolv.conf"
    ) -> [String] {
        func nameservers(_ path: String) -> [String] {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
            return text.split(separator: "\n").compactMap { line in
                let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                return fields.count >= 2 && fields[0] == "nameserver" ? String(fields[1]) : nil
            }
        }
        func isLoopback(_ address: String) -> Bool { address.hasPrefix("127.") || address == "::1" }
        let configured = nameservers(resolvConf)
        guard !configured.isEmpty, configured.allSatisfy(isLoopback) else { return [] }
        return nameservers(resolvedConf).filter { !isLoopback($0) }
    }

    /// The first parent directory that `nobody` cannot pass through (no search bit for others).
    static func firstUnsearchableParent(of directory: String) -> String? {
        var path = (directory as NSString).deletingLastPathComponent
        while path != "/" && !path.isEmpty {
            var info = stat()
            if stat(path, &info) == 0 && info.st_mode & S_IXOTH == 0 { return path }
            path = (path as NSString).deletingLastPathComponent
        }
        return nil
    }

    /// passt's own messages, without its complaints about a missing syslog.
    var standardErrorSummary: String {
        process.standardError.split(separator: "\n").filter { !$0.hasPrefix("Failed to send") }.joined(separator: "\n")
            .trimmingWhitespace()
    }

    /// Stops passt (SIGTERM, then SIGKILL).
    public func stop() async {
        _ = await process.terminate(grace: .seconds(1))
    }
}

/// Reads `/proc/net/unix`: whether a Unix stream socket bound to a path is listening.
enum UnixSocketTable {
    static func isListening(_ path: String) -> Bool {
        guard let text = try? String(contentsOfFile: "/proc/net/unix", encoding: .utf8) else { return false }
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            // Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 is __SO_ACCEPTCON.
            if fields.count >= 8, fields[7] == path, fields[3] == "00010000" { return true }
        }
        return false
    }
}
