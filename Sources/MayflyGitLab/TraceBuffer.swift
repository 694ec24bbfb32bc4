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

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
        descriptor = fd
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

    public func remove() { unlink(path) }
}
