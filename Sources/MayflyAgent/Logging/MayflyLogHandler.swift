import Foundation
import Logging
import Synchronization

/// Writes log lines to standard error, either readable text
/// (`2026-11-25T17:36:14.123Z info  job started job.id=42`) or one JSON object per line
/// (`log_format: json`). Metadata is for machines, the message for people. Secrets must never be
/// passed as metadata; `Secret` values print as `[REDACTED]` if they are.
public struct MayflyLogHandler: LogHandler {
    public enum Format: Sendable { case text, json }

    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    public let label: String
    public let format: Format
    private let sink: LogSink

    public init(label: String, level: Logger.Level, format: Format, sink: LogSink = .standardError) {
        self.label = label
        self.logLevel = level
        self.format = format
        self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let time = Self.timestamp()
        let line: String
        switch format {
        case .text:
            let level = event.level.rawValue.padding(toLength: 7, withPad: " ", startingAt: 0)
            let fields = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\(Self.textValue($0.value))" }
            line = ([time, level, event.message.description] + fields).joined(separator: " ")
        case .json:
            var object: [String: Any] = [
                "time": time, "level": event.level.rawValue, "msg": event.message.description, "logger": label,
            ]
            for (key, value) in merged { object[key] = Self.jsonValue(value) }
            let data =
                (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
            line = String(decoding: data, as: UTF8.self)
        }
        sink.write(line + "\n")
    }

    /// UTC with milliseconds, `2026-11-25T17:36:14.123Z`. Written by hand from `gmtime_r`:
    /// `ISO8601DateFormatter` builds an ICU formatter for every line, which costs time and keeps
    /// megabytes of ICU code resident in an otherwise idle agent.
    static func timestamp(_ time: timespec = Self.now()) -> String {
        var seconds = time_t(time.tv_sec)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        let milliseconds = Int32(time.tv_nsec / 1_000_000)
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(milliseconds, 3))Z"
    }

    private static func now() -> timespec {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return time
    }

    private static func textValue(_ value: Logger.MetadataValue) -> String {
        let text = value.description
        return text.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" }) || text.isEmpty
            ? "\"" + text.replacingOccurrences(of: "\"", with: "\\\"") + "\"" : text
    }

    private static func jsonValue(_ value: Logger.MetadataValue) -> Any {
        switch value {
        case .string(let string): return string
        case .stringConvertible(let convertible): return convertible.description
        case .array(let array): return array.map(jsonValue)
        case .dictionary(let dictionary): return dictionary.mapValues(jsonValue)
        }
    }
}

/// Where log lines go: standard error by default, or a buffer in tests. Lines from many threads
/// are written whole, one at a time.
public final class LogSink: Sendable {
    public static let standardError = LogSink(fileDescriptor: 2)

    private let fileDescriptor: Int32?
    private let buffer = Mutex<String>("")

    public init(fileDescriptor: Int32) { self.fileDescriptor = fileDescriptor }
    /// A sink that keeps lines in memory; read them with `contents`.
    public init() { fileDescriptor = nil }

    public var contents: String { buffer.withLock { $0 } }

    func write(_ line: String) {
        buffer.withLock { buffer in
            guard let fileDescriptor else {
                buffer += line
                return
            }
            var bytes = Array(line.utf8)
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeMutableBytes {
                    Foundation.write(fileDescriptor, $0.baseAddress! + offset, $0.count - offset)
                }
                if written <= 0 { break }
                offset += written
            }
        }
    }
}

extension Configuration.LogLevel {
    public var swiftLogLevel: Logger.Level {
        switch self {
        case .debug: return .debug
        case .info: return .info
        case .warning: return .warning
        case .error: return .error
        }
    }
}
