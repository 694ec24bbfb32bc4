/// Masks secrets in a stream of bytes before they reach a log, as gitlab-runner does:
///
/// 1. masked values (masked variables, the job token) → `[MASKED]`;
/// 2. known token prefixes: `glpat-abc123` → `glpat-[MASKED]` (the prefix stays, the run of
///    `[0-9A-Za-z._=-]` after it is hidden);
/// 3. sensitive URL parameters: `?private_token=abc` → `?private_token=[MASKED]`.
///
/// All three work across chunk boundaries: the end of a chunk is held back only while it could
/// still be (the beginning of) something to mask, so memory stays bounded whatever the volume.
public struct SecretMasker: Sendable {
    public static let replacement = Array("[MASKED]".utf8)

    /// gitlab-runner's default token prefixes (with `FF_MASK_ALL_DEFAULT_TOKENS`, on by default).
    public static let defaultTokenPrefixes = [
        "glpat-", "gloas-", "gldt-", "glrt-", "glcbt-", "glrtr-", "glptt-", "glft-", "glimt-", "glagent-", "glsoat-", "glffct-",
        "_gitlab_session=", "gltok-",
    ]
    /// Query parameters whose values are hidden (names compared without case).
    public static let sensitiveParameters = [
        "private_token", "authenticity_token", "rss_token", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
    ]

    private let secrets: [[UInt8]]
    private let prefixes: [[UInt8]]
    /// `name=` in lower case.
    private let parameters: [[UInt8]]
    /// Which bytes can begin something to mask: every other byte passes at once.
    private let firstBytes: [Bool]
    private var pending: [UInt8] = []
    private var previous: UInt8 = 0
    /// A masked value longer than `longestHeldRun` was cut: the rest of it (in later chunks) is
    /// dropped too. `true` for a URL parameter's value, `false` for a token.
    private var continuingRun: Bool?
    private static let longestHeldRun = 4096

    /// `secrets` are trimmed of surrounding white space; empty ones are dropped, every other one is
    /// masked however short (as gitlab-runner does: GitLab's UI refuses masked values under 8
    /// characters, but a server's API or a job file may still send one, and a leaked secret is
    /// worse than a garbled log).
    public init(secrets: [String], tokenPrefixes: [String] = [], maskURLParameters: Bool = false) {
        let bytes = Set(secrets.map { Array($0.trimmingWhitespace().utf8) }.filter { !$0.isEmpty })
        // Longest first, so that a secret containing another is replaced whole.
        self.secrets = bytes.sorted { $0.count > $1.count }
        self.prefixes = Set(tokenPrefixes.map { Array($0.trimmingWhitespace().utf8) }.filter { !$0.isEmpty }).sorted {
            $0.count > $1.count
        }
        self.parameters = maskURLParameters ? Self.sensitiveParameters.map { Array(($0 + "=").utf8) } : []
        var firstBytes = [Bool](repeating: false, count: 256)
        for pattern in self.secrets + self.prefixes { firstBytes[Int(pattern[0])] = true }
        for parameter in parameters {
            firstBytes[Int(parameter[0])] = true
            firstBytes[Int(Self.upper(parameter[0]))] = true
        }
        self.firstBytes = firstBytes
    }

    public var isEmpty: Bool { secrets.isEmpty && prefixes.isEmpty && parameters.isEmpty }

    /// Feeds `chunk`; returns the bytes that are now safe to emit.
    public mutating func mask(_ chunk: [UInt8]) -> [UInt8] {
        if isEmpty { return chunk }
        pending += chunk
        let (output, consumed) = replace(in: pending, finishing: false)
        pending.removeFirst(consumed)
        return output
    }

    /// Emits what is still held back (at the end of the stream).
    public mutating func finish() -> [UInt8] {
        if isEmpty { return [] }
        let (output, _) = replace(in: pending, finishing: true)
        pending.removeAll()
        return output
    }

    private static func upper(_ byte: UInt8) -> UInt8 { (97...122).contains(byte) ? byte - 32 : byte }
    private static func lower(_ byte: UInt8) -> UInt8 { (65...90).contains(byte) ? byte + 32 : byte }

    private static func isTokenByte(_ byte: UInt8) -> Bool {
        (48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte) || byte == 46 || byte == 95
            || byte == 61
            || byte == 45
    }

    private static func isParameterValueByte(_ byte: UInt8) -> Bool {
        // Up to the next parameter, fragment, quote, angle bracket or white space.
        !(byte == 38 || byte == 35 || byte == 34 || byte == 39 || byte == 60 || byte == 62 || byte <= 32)
    }

    private static func startsCaseInsensitive(_ rest: ArraySlice<UInt8>, with pattern: [UInt8]) -> Bool {
        guard rest.count >= pattern.count else { return false }
        return zip(rest.prefix(pattern.count), pattern).allSatisfy { lower($0) == $1 }
    }

    private static func isCaseInsensitivePrefix(_ rest: ArraySlice<UInt8>, of pattern: [UInt8]) -> Bool {
        rest.count < pattern.count && zip(rest, pattern).allSatisfy { lower($0) == $1 }
    }

    /// Masks what can be decided in `buffer`. Unless `finishing`, it stops before a position
    /// where the rest could still turn out to be (part of) something to mask. Returns the output
    /// and how many bytes were consumed.
    private mutating func replace(in buffer: [UInt8], finishing: Bool) -> ([UInt8], Int) {
        var output: [UInt8] = []
        output.reserveCapacity(buffer.count)
        var index = 0
        if let isParameter = continuingRun {
            while index < buffer.count
                && (isParameter ? Self.isParameterValueByte(buffer[index]) : Self.isTokenByte(buffer[index]))
            {
                index += 1
            }
            if index < buffer.count || finishing { continuingRun = nil }
        }
        scanning: while index < buffer.count {
            let byte = buffer[index]
            if !firstBytes[Int(byte)] {
                output.append(byte)
                previous = byte
                index += 1
                continue
            }
            let rest = buffer[index...]
            if !finishing {
                let partial =
                    (secrets + prefixes).contains { $0.count > rest.count && $0.starts(with: rest) }
                    || ((previous == 63 || previous == 38) && parameters.contains { Self.isCaseInsensitivePrefix(rest, of: $0) })
                if partial { break }
            }
            if let matched = secrets.first(where: { $0.count <= rest.count && rest.starts(with: $0) }) {
                output += Self.replacement
                index += matched.count
                previous = matched.last!
                continue
            }
            var runStart: Int?
            var isParameter = false
            if let prefix = prefixes.first(where: { rest.starts(with: $0) }) {
                runStart = index + prefix.count
            } else if previous == 63 || previous == 38,
                let parameter = parameters.first(where: { Self.startsCaseInsensitive(rest, with: $0) })
            {
                runStart = index + parameter.count
                isParameter = true
            }
            if let runStart {
                var end = runStart
                while end < buffer.count && (isParameter ? Self.isParameterValueByte(buffer[end]) : Self.isTokenByte(buffer[end]))
                { end += 1 }
                if end == buffer.count && !finishing {
                    // The value may go on in the next chunk: wait, unless it is already very long.
                    guard end - runStart > Self.longestHeldRun else { break scanning }
                    continuingRun = isParameter
                }
                output += buffer[index..<runStart]
                if end > runStart { output += Self.replacement }
                previous = buffer[end - 1]
                index = end
                continue
            }
            output.append(byte)
            previous = byte
            index += 1
        }
        return (output, index)
    }
}
