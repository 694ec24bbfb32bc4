/// The IEEE CRC-32 (the one zlib and gitlab-runner's trace checksum use), computed incrementally.
public struct CRC32: Sendable, Equatable {
    private static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 == 1 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
        return value
    }

    private var state: UInt32 = 0xFFFF_FFFF

    public init() {}

    public mutating func update(_ bytes: [UInt8]) {
        var crc = state
        Self.table.withUnsafeBufferPointer { table in
            for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        }
        state = crc
    }

    public var value: UInt32 { state ^ 0xFFFF_FFFF }

    /// `crc32:%08x`, as GitLab's `output.checksum` wants it.
    public var gitLabChecksum: String { "crc32:" + String(value, radix: 16).leftPadded(to: 8, with: "0") }
}
