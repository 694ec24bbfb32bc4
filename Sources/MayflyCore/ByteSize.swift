/// An amount of bytes as configuration writes it: `512MiB`, `4GiB`, `100MB`, `1024`.
/// Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal ones (kB, MB, GB, TB) of 1000.
public struct ByteSize: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var bytes: UInt64

    public init(bytes: UInt64) { self.bytes = bytes }

    public static func kibibytes(_ value: UInt64) -> ByteSize { ByteSize(bytes: value << 10) }
    public static func mebibytes(_ value: UInt64) -> ByteSize { ByteSize(bytes: value << 20) }
    public static func gibibytes(_ value: UInt64) -> ByteSize { ByteSize(bytes: value << 30) }

    public static func < (lhs: ByteSize, rhs: ByteSize) -> Bool { lhs.bytes < rhs.bytes }

    /// Why a size could not be read; the message is meant for a person.
    public struct ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        public let text: String
        public let reason: String
        public var description: String { "'\(text)' is not a size: \(reason)" }
    }

    private static let units: [(String, UInt64)] = [
        ("B", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
        ("kB", 1000), ("KB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("TB", 1_000_000_000_000),
    ]

    /// Reads `text`: a whole or decimal number and an optional unit (bytes when there is none).
    public static func parse(_ text: String) throws(ParseError) -> ByteSize {
        let trimmed = text.trimmingWhitespace()
        if trimmed.hasPrefix("-") { throw ParseError(text: text, reason: "sizes cannot be negative") }
        let numberEnd = trimmed.firstIndex(where: { !($0.isASCII && ($0.isNumber || $0 == ".")) }) ?? trimmed.endIndex
        let number = trimmed[..<numberEnd]
        let unit = String(trimmed[numberEnd...]).trimmingWhitespace()
        guard !number.isEmpty, let value = Double(number) else {
            throw ParseError(text: text, reason: "expected a number and a unit, as in 512MiB or 4GiB")
        }
        let scale: UInt64
        if unit.isEmpty {
            scale = 1
        } else if let found = units.first(where: { $0.0 == unit }) {
            scale = found.1
        } else {
            throw ParseError(text: text, reason: "unknown unit '\(unit)'; use B, KiB, MiB, GiB, TiB (or kB, MB, GB, TB)")
        }
        let total = value * Double(scale)
        guard total.isFinite, total < 1.8e19 else { throw ParseError(text: text, reason: "it is too large") }
        return ByteSize(bytes: UInt64(total.rounded()))
    }

    /// The size in the largest binary unit that divides it exactly, e.g. `2GiB`, `1536MiB`.
    public var description: String {
        if bytes == 0 { return "0B" }
        for (unit, scale) in [("TiB", UInt64(1) << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        where bytes % scale == 0 {
            return "\(bytes / scale)\(unit)"
        }
        return "\(bytes)B"
    }

    /// A rounded, human-facing form such as `1.5 GiB`, for reports rather than configuration.
    public var approximate: String {
        let value = Double(bytes)
        for (unit, scale) in [("TiB", 1099511627776.0), ("GiB", 1073741824.0), ("MiB", 1048576.0), ("KiB", 1024.0)]
        where value >= scale {
            let scaled = (value / scale * 10).rounded() / 10
            return "\(scaled) \(unit)"
        }
        return "\(bytes) B"
    }
}
