import MayflyCore

/// Which hardware acceleration QEMU uses.
public enum AcceleratorChoice: String, Sendable, CaseIterable {
    /// KVM where it can run a normal guest, TCG (software emulation) otherwise.
    case auto
    /// KVM or fail: never silently slower.
    case kvm
    /// Software emulation, everywhere; what the tests use.
    case tcg
}

/// How a job's disk is made from the golden disk.
public enum CloneStrategyChoice: String, Sendable, CaseIterable {
    /// The fastest that works on the work directory: reflink, then overlay, then copy.
    case auto
    /// `FICLONE`: a copy-on-write copy on btrfs/XFS; needs the same filesystem.
    case reflink
    /// A qcow2 overlay backed by the golden disk (`qemu-img create -b … -F …`).
    case overlay
    /// A sparse full copy.
    case copy
}

/// How often and how patiently to retry taking the auxiliary-storage (NVRAM and disk) locks.
public struct LockRetryPolicy: Sendable, Hashable {
    /// Attempts in all, the first included.
    public var attempts: Int
    public var initial: Duration
    public var maximum: Duration

    public static let defaultAttempts = 8
    public static let defaultInitial: Duration = .milliseconds(250)
    public static let defaultMaximum: Duration = .seconds(8)

    public init(attempts: Int = defaultAttempts, initial: Duration = defaultInitial, maximum: Duration = defaultMaximum) {
        self.attempts = max(1, attempts)
        self.initial = initial
        self.maximum = max(initial, maximum)
    }

    public var backoff: Backoff { Backoff(initial: initial, maximum: maximum, multiplier: 2, jitter: 0.5) }

    /// The longest the retries can wait in all (jitter only shortens waits).
    public var worstCaseWait: Duration {
        (1..<attempts).reduce(Duration.zero) { $0 + backoff.ceiling(forRetry: $1) }
    }
}
