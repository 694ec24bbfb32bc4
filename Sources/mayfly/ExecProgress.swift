import Foundation
import MayflyAgent
import MayflyCore

/// Shows a job's phases on standard error while `mayfly exec` runs. On a terminal: one line that
/// counts up while a phase runs (`▸ boot 2.1s`) and stays as `✓ boot 4.1s` when it ends; it is not
/// redrawn while the script runs, so the job's own output (on standard output) is never garbled.
/// Elsewhere: one plain line per finished phase (`mayfly: boot 4.112s`).
final class ExecProgress: @unchecked Sendable {
    private let terminal: Bool
    private let lock = NSLock()
    private var current: (phase: JobPhase, started: ContinuousClock.Instant)?
    private var ticker: Task<Void, Never>?

    init(terminal: Bool = isatty(2) == 1) {
        self.terminal = terminal
        if terminal {
            ticker = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(100))
                    self?.redraw()
                }
            }
        }
    }

    func handle(_ event: JobEvent) {
        lock.withLock {
            switch event {
            case .started(let phase):
                current = (phase, ContinuousClock.now)
                if phase == .script || phase == .afterScript {
                    write(terminal ? "\r\u{1B}[K▸ \(phase.rawValue)\n" : "mayfly: \(phase.rawValue) started\n")
                }
            case .finished(let phase, let duration):
                if current?.phase == phase { current = nil }
                let time = DurationText.seconds(duration)
                write(terminal ? "\r\u{1B}[K✓ \(phase.rawValue) \(time)\n" : "mayfly: \(phase.rawValue) \(time)\n")
            }
        }
    }

    /// A line of its own (an interruption, the result).
    func note(_ text: String) {
        lock.withLock { write(terminal ? "\r\u{1B}[K\(text)\n" : "mayfly: \(text)\n") }
    }

    func finish() {
        ticker?.cancel()
        lock.withLock { if terminal, current != nil { write("\r\u{1B}[K") } }
    }

    private func redraw() {
        lock.withLock {
            guard let current, current.phase != .script, current.phase != .afterScript else { return }
            let elapsed = DurationText.seconds(ContinuousClock.now - current.started)
            write("\r\u{1B}[K▸ \(current.phase.rawValue) \(elapsed)")
        }
    }

    private func write(_ text: String) {
        FileHandle.standardError.write(Data(text.utf8))
    }
}

/// Writes a job's log to standard output. Writes happen on Dispatch's threads (a slow reader of
/// the pipe blocks them, not the cooperative pool), one chunk at a time, in order.
struct StandardOutputSink: JobLogSink {
    func write(_ bytes: [UInt8]) async {
        await BlockingWork.run {
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeBytes { Foundation.write(1, $0.baseAddress! + offset, $0.count - offset) }
                if written <= 0 { return }
                offset += written
            }
        }
    }
}

/// Turns signals into calls of `handler` (their default action, dying at once, would leave VMs
/// behind). Keep the value alive while it should apply.
final class SignalWatcher: @unchecked Sendable {
    private var sources: [any DispatchSourceSignal] = []

    init(signals: [Int32] = [SIGINT, SIGTERM], _ handler: @escaping @Sendable (Int32) -> Void) {
        for signalNumber in signals {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler { handler(signalNumber) }
            source.resume()
            sources.append(source)
        }
    }

    deinit {
        for source in sources { source.cancel() }
    }
}
