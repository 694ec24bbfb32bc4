/// Replaces secret values with `[MASKED]` in a stream of bytes, also when a value is split
/// across chunks: it holds back the end of a chunk only while it could still be the beginning of
/// a secret (at most the longest secret's length less one). Memory is bounded by that,
/// whatever the volume.
public struct SecretMasker: Sendable {
    public static let replacement = Array("[MASKED]".utf8)

    private let secrets: [[UInt8]]
    /// Which bytes can begin a secret: every other byte is passed through at once.
    private let firstBytes: [Bool]
    private var pending: [UInt8] = []

    /// `secrets` shorter than `minimumLength` bytes are not masked (masking "a" would destroy the
    /// log); GitLab itself requires masked values of at least 8 characters.
    public init(secrets: [String], minimumLength: Int = 4) {
        let bytes = Set(secrets.map { Array($0.utf8) }.filter { $0.count >= minimumLength })
        // Longest first, so that a secret containing another is replaced whole.
        self.secrets = bytes.sorted { $0.count > $1.count }
        var firstBytes = [Bool](repeating: false, count: 256)
        for secret in self.secrets { firstBytes[Int(secret[0])] = true }
        self.firstBytes = firstBytes
    }

    public var isEmpty: Bool { secrets.isEmpty }

    /// Feeds `chunk`; returns the bytes that are now safe to emit.
    public mutating func mask(_ chunk: [UInt8]) -> [UInt8] {
        if secrets.isEmpty { return chunk }
        pending += chunk
        let (output, consumed) = replace(in: pending, finishing: false)
        pending.removeFirst(consumed)
        return output
    }

    /// Emits what is still held back (at the end of the stream).
    public mutating func finish() -> [UInt8] {
        if secrets.isEmpty { return [] }
        let (output, _) = replace(in: pending, finishing: true)
        pending.removeAll()
        return output
    }

    /// Replaces secrets in `buffer`. Unless `finishing`, it stops before a position where the
    /// rest of the buffer could still be the beginning of a secret (it cannot tell yet).
    /// Returns the output and how many bytes were consumed.
    private func replace(in buffer: [UInt8], finishing: Bool) -> ([UInt8], Int) {
        var output: [UInt8] = []
        output.reserveCapacity(buffer.count)
        var index = 0
        while index < buffer.count {
            if !firstBytes[Int(buffer[index])] {
                output.append(buffer[index])
                index += 1
                continue
            }
            let rest = buffer[index...]
            if !finishing && secrets.contains(where: { $0.count > rest.count && $0.starts(with: rest) }) { break }
            if let matched = secrets.first(where: { $0.count <= rest.count && rest.starts(with: $0) }) {
                output += Self.replacement
                index += matched.count
                continue
            }
            output.append(buffer[index])
            index += 1
        }
        return (output, index)
    }
}
