import Foundation

/// Small state files (clone owner records, spool records): pretty JSON with ISO-8601 dates,
/// written so that readers see the old content or the new, never a mix (a temporary file in the
/// same directory, fsync, rename(2)), mode 0600.
public enum StateFile {
    /// Why a state file could not be written.
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let path: String
        public let errno: Int32
        public var description: String { "cannot write \(path): \(String(cString: strerror(errno)))" }
    }

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }()

    static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }()

    /// The record at `path`, or `nil` when it is missing or unreadable.
    public static func read<T: Decodable>(_ type: T.Type, from path: String) -> T? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? decoder.decode(type, from: data)
    }

    public static func write<T: Encodable>(_ value: T, to path: String, mode: mode_t = 0o600) throws(Failure) {
        guard let data = try? encoder.encode(value) else { throw Failure(path: path, errno: EINVAL) }
        try AtomicFile.write(data, to: path, mode: mode)
    }
}

/// Writes a file so that readers see either the old content or the new, never a mix: a
/// temporary file in the same directory, fsync, then rename(2).
public enum AtomicFile {
    public static func write(_ data: Data, to path: String, mode: mode_t = 0o644) throws(StateFile.Failure) {
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw StateFile.Failure(path: temporary, errno: errno) }
        var offset = 0
        let bytes = [UInt8](data)
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 {
                let code = errno
                close(fd)
                unlink(temporary)
                throw StateFile.Failure(path: temporary, errno: code)
            }
            offset += written
        }
        fsync(fd)
        close(fd)
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw StateFile.Failure(path: path, errno: code)
        }
    }
}
