/// Replaces secret values with `[MASKED]` in a stream of bytes, also when a value is split
/// across chunks: it holds back the last (longest secret − 1) bytes of each chunk until it knows
/// they do not begin a secret. Memory is bounded by that hold-back, whatever the volume.
public struct SecretMasker: Sendable {
    public static let replacement = Array("[MASKED]".utf8)

    private let secrets: [[UInt8]]
    private let holdBack: Int
    private var pending: [UInt8] = []

    /// `secrets` shorter than `minimumLength` bytes are not masked (masking "a" would destroy the
    /// log); GitLab itself requires masked values of at least 8 characters.
    public init(secrets: [String], minimumLength: Int = 4) {
        let bytes = Set(secrets.map { Array($0.utf8) }.filter { $0.count >= minimumLength })
        // Longest first, so that a secret containing another is replaced whole.
        self.secrets = bytes.sorted { $0.count > $1.count }
        holdBack = max(0, (self.secrets.first?.count ?? 0) - 1)
    }

    public var isEmpty: Bool { secrets.isEmpty }

    /// Feeds `chunk`; returns the bytes that are now safe to emit.
    public mutating func mask(_ chunk: [UInt8]) -> [UInt8] {
        if secrets.isEmpty { return chunk }
        pending += chunk
        let (output, consumed) = replace(in: pending, keepingTail: holdBack)
        pending.removeFirst(consumed)
        return output
    }

    /// Emits what is still held back (at the end of the stream).
    public mutating func finish() -> [UInt8] {
        if secrets.isEmpty { return [] }
        let (output, _) = replace(in: pending, keepingTail: 0)
        pending.removeAll()
        return output
    }

    /// Replaces secrets in `buffer`, leaving unconsumed a tail of up to `keep` bytes that could
    /// still be the beginning of a secret. Returns the output and how many bytes were consumed.
    private func replace(in buffer: [UInt8], keepingTail keep: Int) -> ([UInt8], Int) {
        var output: [UInt8] = []
        output.reserveCapacity(buffer.count)
        var index = 0
        let safeEnd = buffer.count - keep
        while index < buffer.count {
            var matched: [UInt8]?
            for secret in secrets where index + secret.count <= buffer.count {
                if buffer[index] == secret[0] && buffer[index..<index + secret.count].elementsEqual(secret) {
                    matched = secret
                    break
                }
            }
            if let matched {
                output += Self.replacement
                index += matched.count
                continue
            }
            if index >= safeEnd { break }
            output.append(buffer[index])
            index += 1
        }
        return (output, index)
    }
}
