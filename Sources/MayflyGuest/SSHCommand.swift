import Foundation
import MayflyCore
import MayflyVM

/// The OpenSSH client's command line for one guest: key-only, batch mode, the guest's host key
/// pinned through the clone's own known_hosts (`StrictHostKeyChecking=yes`: an unknown or changed
/// host key is refused, never accepted), no user or system ssh configuration, no agent.
public struct SSHCommand: Sendable, Equatable {
    public let endpoint: SSHEndpoint
    public var connectTimeout: Duration = .seconds(10)

    public init(endpoint: SSHEndpoint) { self.endpoint = endpoint }

    /// The arguments for `ssh` that run `remoteCommand` (nil: the remote user's shell reads the
    /// script from standard input). With `forwardingHostPorts`, the endpoint's allowed host
    /// ports are forwarded to the same ports on the guest's 127.0.0.1 for the session's length,
    /// and a forward the guest refuses (the port is taken there) fails the session.
    public func arguments(remoteCommand: String? = nil, forwardingHostPorts: Bool = false) -> [String] {
        var arguments = [
            "-F", "/dev/null",
            "-i", endpoint.privateKey,
            "-p", "\(endpoint.port)",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "PasswordAuthentication=no",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "UserKnownHostsFile=\(endpoint.knownHosts)",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=\(max(1, connectTimeout.components.seconds))",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=6",
            "-o", "LogLevel=ERROR",
            "-T",
        ]
        if let controlPath = endpoint.controlPath {
            // Through the persistent connection when its socket answers; a normal connection otherwise.
            arguments += ["-o", "ControlMaster=no", "-o", "ControlPath=\(controlPath)"]
        }
        if forwardingHostPorts && !endpoint.forwardedHostPorts.isEmpty {
            arguments += ["-o", "ExitOnForwardFailure=yes"]
            for port in endpoint.forwardedHostPorts { arguments += ["-R", "127.0.0.1:\(port):127.0.0.1:\(port)"] }
        }
        arguments.append("\(endpoint.user)@\(endpoint.host)")
        if let remoteCommand { arguments.append(remoteCommand) }
        return arguments
    }

    /// The arguments for the persistent connection itself (`-M -N`: it runs no command and
    /// serves sessions through `controlPath` until it is stopped).
    public func masterArguments(controlPath: String) -> [String] {
        var plain = endpoint
        plain.controlPath = nil
        var arguments = SSHCommand(endpoint: plain).arguments()
        let destination = arguments.removeLast()
        arguments += ["-M", "-N", "-o", "ControlPath=\(controlPath)", "-o", "ControlPersist=no", destination]
        return arguments
    }

    /// Runs `remoteCommand` in the guest and collects its output (for short commands; jobs
    /// stream through the job runner).
    public func run(_ remoteCommand: String, timeout: Duration = .seconds(120)) async throws(CommandRunner.Failure)
        -> CommandRunner.Output
    {
        try await CommandRunner.run(
            "ssh", arguments(remoteCommand: remoteCommand), environment: ["PATH": "/usr/bin:/bin", "LC_ALL": "C"],
            timeout: timeout)
    }
}

/// Starts a persistent SSH connection to a guest (OpenSSH's ControlMaster) as a supervised
/// child process, for a VM that waits for a job (the warm pool): the job's sessions then skip the
/// TCP connection, key exchange and authentication. The caller hands the process to the VM
/// (`RunningVM.attach`), which stops it before QEMU.
public enum SSHMaster {
    public static func start(_ endpoint: SSHEndpoint, controlPath: String, timeout: Duration = .seconds(15)) async throws
        -> SupervisedProcess
    {
        let process = try await SupervisedProcess.spawn(
            "ssh", arguments: SSHCommand(endpoint: endpoint).masterArguments(controlPath: controlPath))
        let target = "\(endpoint.user)@\(endpoint.host):\(endpoint.port)"
        let readiness: SupervisedProcess.Readiness
        do {
            readiness = try await process.waitUntilReady(timeout: timeout) { FileManager.default.fileExists(atPath: controlPath) }
        } catch {
            _ = await process.terminate()
            throw error
        }
        switch readiness {
        case .ready:
            return process
        case .exited(let reason):
            throw GuestError.unreachable(
                endpoint: target,
                lastError: "the persistent connection \(reason): \(process.standardError.trimmingWhitespace())")
        case .timedOut:
            _ = await process.terminate()
            throw GuestError.unreachable(
                endpoint: target,
                lastError: "the persistent connection did not open its control socket within \(DurationText.format(timeout))")
        }
    }
}
