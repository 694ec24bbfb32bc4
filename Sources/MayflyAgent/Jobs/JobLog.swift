import MayflyCore

/// A job's log: everything the job printed (made valid UTF-8) and every line Mayfly adds (header, phases, errors,
/// footer), masked before it leaves this type (masked values become `[MASKED]`, also when split
/// across writes) and cut at the log limit with a notice. One per job; bounded memory.
public actor JobLog {
    private let sink: any JobLogSink
    private var masker: SecretMasker
    private var repair = UTF8Repair()
    private let limit: UInt64
    private(set) var bytesWritten: UInt64 = 0
    private(set) var truncated = false
    private var endsWithNewline = true

    public init(sink: any JobLogSink, maskedValues: [String], limit: ByteSize, maskTokenPrefixes: [String] = []) {
        self.sink = sink
        self.masker = SecretMasker(secrets: maskedValues, tokenPrefixes: maskTokenPrefixes, maskURLParameters: true)
        self.limit = limit.bytes
    }

    /// Output of the job itself (invalid UTF-8 becomes U+FFFD first, as with gitlab-runner).
    public func write(_ bytes: [UInt8]) async {
        await emit(masker.mask(repair.repair(bytes)))
    }

    /// A line of Mayfly's own (`text` without its newline), on a line of its own. Any output still
    /// held back by the masker goes first, so the order is kept.
    public func line(_ text: String) async {
        await emit(masker.mask(repair.finish()))
        await emit(masker.finish())
        await emit(masker.mask(Array(((endsWithNewline ? "" : "\n") + text + "\n").utf8)))
        await emit(masker.finish())
    }

    /// Flushes what the masker still holds.
    public func finish() async {
        await emit(masker.mask(repair.finish()))
        await emit(masker.finish())
    }

    public var size: UInt64 { bytesWritten }

    /// gitlab-runner's notice, in bold yellow, so that GitLab's users recognise it.
    static func limitNotice(_ limit: UInt64) -> [UInt8] {
        Array(
            "\n\u{1B}[33;1mJob's log exceeded limit of \(limit) bytes.\nJob execution will continue but no more output will be collected.\u{1B}[0;m\n"
                .utf8)
    }

    /// Writes `bytes`, or as much of them as fits with the limit's notice after them: the log,
    /// notice included, never grows past the limit (GitLab refuses a log larger than its own
    /// limit, 100 MiB by default, and would abort the job).
    private func emit(_ bytes: [UInt8]) async {
        guard !bytes.isEmpty, !truncated else { return }
        endsWithNewline = bytes.last == 10
        let notice = Self.limitNotice(limit)
        let usable = limit > UInt64(notice.count) ? limit - UInt64(notice.count) : 0
        let room = usable > bytesWritten ? usable - bytesWritten : 0
        if UInt64(bytes.count) <= room {
            bytesWritten += UInt64(bytes.count)
            await sink.write(bytes)
            return
        }
        // Never cut inside a UTF-8 character: back off over continuation bytes.
        var cut = Int(room)
        while cut > 0 && cut < bytes.count && bytes[cut] & 0xC0 == 0x80 { cut -= 1 }
        let kept = Array(bytes.prefix(cut))
        bytesWritten += UInt64(kept.count + notice.count)
        truncated = true
        await sink.write(kept + notice)
    }
}
