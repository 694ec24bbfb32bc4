import Foundation
import MayflyCore

/// How VMs are made and booted; the agent fills it from the `vm:` configuration section.
public struct VMOptions: Sendable {
    /// `nil`: the bundle's default.
    public var cpus: Int?
    public var memory: ByteSize?
    public var accelerator: AcceleratorChoice = .auto
    public var clone: CloneStrategyChoice = .auto
    public var gracePeriod: Duration = .seconds(5)
    public var lockRetry = LockRetryPolicy()
    public var bootTimeout: Duration = .seconds(180)
    /// How long a guest gets to power off by itself before QEMU is made to quit. The clone is
    /// deleted either way, so this only lets the guest's own shutdown run when it is quick: a
    /// systemd guest under emulation takes over 10 s, time the job's slot would stay taken.
    public var shutdownGrace: Duration = .seconds(3)
    public var qemuExecutable = "qemu-system-x86_64"
    /// The guest's network: isolated from the host's loopback (passt) unless configured otherwise.
    public var network = GuestNetwork()

    public init() {}
}

/// Where and as whom to reach a booted guest's SSH server, with the host key pinned.
public struct SSHEndpoint: Sendable, Equatable {
    public let host: String
    public let port: Int
    public let user: String
    public let privateKey: String
    /// A known_hosts file holding only this guest's host key, for `StrictHostKeyChecking=yes`.
    public let knownHosts: String
    /// Host loopback ports that sessions running job scripts forward to the guest's 127.0.0.1.
    public var forwardedHostPorts: [Int] = []
    /// The control socket of a persistent connection to this guest (OpenSSH `ControlPath`):
    /// sessions go through it and skip the connection and key exchange.
    public var controlPath: String?
}

/// The phases of a VM's life that the launcher owns, in order, as reported while they happen.
/// `cleanup` (stopping QEMU, deleting the clone) comes after the caller's body, on every path.
public enum VMPhase: String, Sendable, CaseIterable {
    case clone, grace, lock, boot, cleanup
}

/// How long each phase of preparing the VM took, and how many lock attempts were needed.
public struct VMTimings: Sendable, Equatable {
    public var clone: Duration = .zero
    public var grace: Duration = .zero
    public var lock: Duration = .zero
    public var boot: Duration = .zero
    public var lockAttempts = 0
}

/// A booted VM, handed to the code that runs the job in it. It owns nothing itself: the
/// `VMLauncher` that made it stops QEMU and deletes the clone when the job's closure returns.
public struct VirtualMachine: Sendable {
    public let bundle: BundleDirectory
    public let clone: CloneDirectory
    public let cloneStrategy: CloneStrategyChoice
    public let accelerator: Accelerator
    public let qemu: QEMUProcess
    public var ssh: SSHEndpoint
    public let timings: VMTimings

    /// The last `lines` lines of the guest's serial console.
    public func serialTail(lines: Int = 20) -> String {
        SerialLog.tail(clone.serialLogPath, lines: lines)
    }
}

/// Reads the end of a serial console log.
enum SerialLog {
    static func tail(_ path: String, lines: Int) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { return "" }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        let start = size > 16384 ? size - 16384 : 0
        try? handle.seek(toOffset: start)
        let data = (try? handle.readToEnd()) ?? Data()
        let text = String(decoding: data, as: UTF8.self).replacingOccurrences(of: "\r", with: "")
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
            .trimmingWhitespace()
    }
}
