import Foundation
import MayflyCore

/// A job's log on disk, append-only, with its running CRC-32 and size: what is uploaded comes
/// from here, so a slow or absent server never holds log bytes in memory. File I/O runs on
/// `BlockingWork`'s threads.
public actor TraceBuffer {
    public let path: String
    private let descriptor: Int32
    private var crc = CRC32()
    public private(set) var size = 0

    /// Opens the trace at `path`: a new, empty one, or (`resume`) the one a dead agent left,
    /// whose size and checksum are computed from its bytes.
    public init(path: String, resume: Bool = false) throws {
        self.path = path
        let fd = open(path, O_RDWR | O_CREAT | (resume ? 0 : O_TRUNC) | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
        descriptor = fd
        if resume {
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            var offset = 0
            while true {
                let count = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(offset)) }
                if count <= 0 { break }
                crc.update(Array(chunk.prefix(count)))
                offset += count
            }
            size = offset
        }
    }

    deinit { close(descriptor) }

    public func append(_ bytes: [UInt8]) async {
        guard !bytes.isEmpty else { return }
        let fd = descriptor
        let offset = size
        await BlockingWork.run {
            var written = 0
            while written < bytes.count {
                let result = bytes.withUnsafeBytes {
                    pwrite(fd, $0.baseAddress! + written, $0.count - written, off_t(offset + written))
                }
                if result <= 0 { return }
                written += result
            }
        }
        crc.update(bytes)
        size += bytes.count
    }

    /// Up to `limit` bytes from `offset`.
    public func read(from offset: Int, limit: Int) async -> [UInt8] {
        let count = max(0, min(limit, size - offset))
        guard count > 0 else { return [] }
        let fd = descriptor
        return await BlockingWork.run {
            var buffer = [UInt8](repeating: 0, count: count)
            var done = 0
            while done < count {
                let result = buffer.withUnsafeMutableBytes {
                    pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done))
                }
                if result <= 0 { break }
                done += result
            }
            return Array(buffer.prefix(done))
        }
    }

    public var checksum: String { crc.gitLabChecksum }

    /// Appends a line of Mayfly's own (after a crash), on a line of its own.
    public func appendLine(_ text: String) async {
        var bytes = Array((text + "\n").utf8)
        if size > 0, await read(from: size - 1, limit: 1) != [10] { bytes.insert(10, at: 0) }
        await append(bytes)
    }
}
