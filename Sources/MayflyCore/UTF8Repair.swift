/// Makes a job's output valid UTF-8 as it streams, as gitlab-runner does before its log buffer:
/// each invalid sequence becomes U+FFFD. A character split across chunks is held back until
/// the rest arrives (at most 3 bytes), so valid output passes unchanged however it is cut.
public struct UTF8Repair: Sendable {
    private var held: [UInt8] = []

    public init() {}

    /// Feeds `chunk`; returns the bytes that are now complete, repaired.
    public mutating func repair(_ chunk: [UInt8]) -> [UInt8] {
        var bytes = held
        bytes += chunk
        held = []
        let cut = Self.completePrefix(bytes)
        if cut < bytes.count { held = Array(bytes[cut...]) }
        return Self.repaired(bytes[..<cut])
    }

    /// What is still held (an unfinished character at the end of the output), repaired.
    public mutating func finish() -> [UInt8] {
        defer { held = [] }
        return Self.repaired(held[...])
    }

    /// The length of `bytes` without a trailing character that may still be completed.
    static func completePrefix(_ bytes: [UInt8]) -> Int {
        // Look back over at most 3 continuation bytes for the start of the last character.
        var index = bytes.count - 1
        var continuations = 0
        while index >= 0 && bytes[index] & 0xC0 == 0x80 && continuations < 3 {
            index -= 1
            continuations += 1
        }
        guard index >= 0 else { return bytes.count }
        let lead = bytes[index]
        let length: Int
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0...0xEF: length = 3
        case 0xF0...0xF4: length = 4
        default: return bytes.count  // ASCII or not a lead byte: nothing to wait for
        }
        return continuations + 1 < length ? index : bytes.count
    }

    static func repaired(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        if bytes.isEmpty { return [] }
        // The standard library's validation is fast; the copy is made only for invalid input.
        if bytes.allSatisfy({ $0 < 0x80 }) || String(validating: bytes, as: UTF8.self) != nil { return Array(bytes) }
        return Array(String(decoding: bytes, as: UTF8.self).utf8)
    }
}
