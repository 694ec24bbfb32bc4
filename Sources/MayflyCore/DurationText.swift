/// Parses and prints durations the way Mayfly's configuration writes them: `500ms`, `5s`, `3m`,
/// `1h`, and sums of them such as `1h30m`. Units: `ms`, `s`, `m`, `h`, `d`.
public enum DurationText {
    /// Why a duration could not be read; the message is meant for a person.
    public struct ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        public let text: String
        public let reason: String
        public var description: String { "'\(text)' is not a duration: \(reason)" }
    }

    private static let units: [(String, Int64)] = [
        ("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000),
    ]

    /// Reads `text` as a non-negative duration. `0` alone is allowed without a unit.
    public static func parse(_ text: String) throws(ParseError) -> Duration {
        let trimmed = text.trimmingWhitespace()
        if trimmed == "0" { return .zero }
        if trimmed.isEmpty { throw ParseError(text: text, reason: "it is empty") }
        if trimmed.hasPrefix("-") {
            throw ParseError(text: text, reason: "durations cannot be negative")
        }
        var milliseconds: Int64 = 0
        var index = trimmed.startIndex
        while index < trimmed.endIndex {
            let numberStart = index
            while index < trimmed.endIndex, trimmed[index].isASCII, trimmed[index].isNumber || trimmed[index] == "." {
                index = trimmed.index(after: index)
            }
            let number = trimmed[numberStart..<index]
            guard !number.isEmpty, let value = Double(number) else {
                throw ParseError(text: text, reason: "expected a number followed by ms, s, m, h or d, as in 500ms, 5s, 3m, 1h")
            }
            while index < trimmed.endIndex, trimmed[index] == " " { index = trimmed.index(after: index) }
            let unitStart = index
            while index < trimmed.endIndex, trimmed[index].isLetter {
                index = trimmed.index(after: index)
            }
            let unit = String(trimmed[unitStart..<index])
            guard let scale = units.first(where: { $0.0 == unit })?.1 else {
                let shown = unit.isEmpty ? "no unit" : "unit '\(unit)'"
                throw ParseError(text: text, reason: "\(shown) after \(number); use ms, s, m, h or d")
            }
            let part = value * Double(scale)
            guard part.isFinite, part < 1e15 else { throw ParseError(text: text, reason: "it is too large") }
            milliseconds += Int64(part.rounded())
        }
        return .milliseconds(milliseconds)
    }

    /// Prints `duration` in the largest units that represent it exactly, e.g. `1h30m`, `250ms`.
    public static func format(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        var remaining = seconds * 1000 + attoseconds / 1_000_000_000_000_000
        if remaining == 0 { return "0s" }
        var result = remaining < 0 ? "-" : ""
        remaining = Swift.abs(remaining)
        for (unit, scale) in units.reversed() where remaining >= scale {
            if unit == "d" { continue }  // hours read better than days in logs
            result += "\(remaining / scale)\(unit)"
            remaining %= scale
        }
        return result
    }

    /// Seconds with millisecond precision, for human-facing timings such as `1.234s`.
    public static func seconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let millis = seconds * 1000 + attoseconds / 1_000_000_000_000_000
        let whole = millis / 1000
        let fraction = Swift.abs(millis % 1000)
        let padded = String(fraction).leftPadded(to: 3, with: "0")
        return "\(whole).\(padded)s"
    }
}

extension Duration {
    /// The duration in (fractional) seconds.
    public var secondsDouble: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// The duration in whole milliseconds, rounded down.
    public var wholeMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}

extension StringProtocol {
    /// The text without leading and trailing spaces, tabs and newlines.
    public func trimmingWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}

extension String {
    /// The string padded on the left to `width` characters.
    public func leftPadded(to width: Int, with pad: Character) -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}
