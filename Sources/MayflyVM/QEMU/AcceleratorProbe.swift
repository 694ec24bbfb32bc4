import Foundation

/// The accelerator a VM actually runs with.
public enum Accelerator: String, Sendable {
    case kvm
    case tcg

    /// QEMU's `-accel` value and the CPU model that goes with it. Under TCG, `max` exposes RDRAND,
    /// so the guest's random number generator is ready at once (no entropy wait before sshd).
    public var qemuArguments: [String] {
        switch self {
        case .kvm: return ["-accel", "kvm", "-cpu", "host"]
        case .tcg: return ["-accel", "tcg", "-cpu", "max"]
        }
    }
}

/// Whether this host's `/dev/kvm` can run a normal guest, and why not when it cannot. A nested
/// "PVM" KVM (module `kvm_pvm`) exposes `/dev/kvm` but hangs a stock kernel, so `/dev/kvm`
/// existing is not enough: a usable KVM is a hardware one (`kvm_intel` or `kvm_amd`) that this
/// process may open read-write.
public struct KVMAssessment: Sendable, Equatable {
    public let usable: Bool
    public let reason: String

    /// Looks at `root` + `/dev/kvm` and `root` + `/sys/module/…`; `root` is "/" except in tests.
    public static func assess(root: String = "/") -> KVMAssessment {
        let base = root.hasSuffix("/") ? String(root.dropLast()) : root
        let manager = FileManager.default
        let device = base + "/dev/kvm"
        guard manager.fileExists(atPath: device) else {
            return KVMAssessment(
                usable: false, reason: "/dev/kvm does not exist (no KVM on this host, or it is not passed into this container)")
        }
        if manager.fileExists(atPath: base + "/sys/module/kvm_pvm") {
            return KVMAssessment(
                usable: false,
                reason: "/dev/kvm is a nested PVM KVM (module kvm_pvm), which cannot boot a normal guest kernel")
        }
        let hardware = ["kvm_intel", "kvm_amd"].first { manager.fileExists(atPath: base + "/sys/module/\($0)") }
        guard let hardware else {
            return KVMAssessment(usable: false, reason: "/dev/kvm exists but neither kvm_intel nor kvm_amd is loaded")
        }
        guard manager.isReadableFile(atPath: device), manager.isWritableFile(atPath: device) else {
            return KVMAssessment(
                usable: false,
                reason: "/dev/kvm (\(hardware)) exists but this user cannot open it read-write (add it to group kvm)")
        }
        return KVMAssessment(usable: true, reason: "/dev/kvm is a hardware KVM (\(hardware))")
    }
}

extension AcceleratorChoice {
    /// The accelerator to use for this choice on a host assessed as `kvm`. `auto` falls back to
    /// TCG; an explicit `kvm` that cannot work is an error rather than a silent slowdown.
    public func resolve(kvm: KVMAssessment = .assess()) throws(VMError) -> Accelerator {
        switch self {
        case .tcg: return .tcg
        case .auto: return kvm.usable ? .kvm : .tcg
        case .kvm:
            guard kvm.usable else { throw .acceleratorUnavailable(reason: kvm.reason) }
            return .kvm
        }
    }
}
