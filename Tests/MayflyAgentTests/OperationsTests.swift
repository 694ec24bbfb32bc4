import Foundation
import Logging
import MayflyTestSupport
import Testing

@testable import MayflyAgent

@Suite("Operations")
struct OperationsTests {
    @Test("systemd notifications arrive as datagrams on NOTIFY_SOCKET")
    func systemdNotify() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.appendingPathComponent("notify").path
            let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            #expect(fd >= 0)
            defer { close(fd) }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            #expect(bound == 0)
            SystemdNotifier(environment: ["NOTIFY_SOCKET": path]).notify("READY=1\nSTATUS=taking jobs")
            var buffer = [UInt8](repeating: 0, count: 256)
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            #expect(count > 0)
            #expect(String(decoding: buffer.prefix(max(0, count)), as: UTF8.self) == "READY=1\nSTATUS=taking jobs")
            SystemdNotifier(environment: [:]).notify("READY=1")  // without systemd: nothing, no crash
        }
    }

    @Test("the systemd unit passes systemd-analyze verify")
    func unitFile() async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") else { return }
        try await withTemporaryDirectory { directory in
            let unit = try String(
                contentsOf: repositoryRoot.appendingPathComponent("deploy/systemd/mayfly.service"), encoding: .utf8)
            let local = directory.appendingPathComponent("mayfly.service")
            try unit.replacingOccurrences(
                of: "/usr/local/bin/mayfly", with: repositoryRoot.appendingPathComponent(".build/debug/mayfly").path
            )
            .write(to: local, atomically: true, encoding: .utf8)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-analyze")
            process.arguments = ["verify", local.path]
            let errors = Pipe()
            process.standardError = errors
            process.standardOutput = errors
            try process.run()
            process.waitUntilExit()
            let output = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(process.terminationStatus == 0, "\(output)")
            #expect(!output.contains("Unknown key"), "\(output)")
            #expect(unit.contains("Type=notify") && unit.contains("NoNewPrivileges=yes") && unit.contains("ProtectSystem=strict"))
        }
    }
}

/// Resident KiB per mapping of /proc/self/smaps: (start address, permissions, path, Rss).
private func mappings() throws -> [(start: String, perms: String, path: String, rss: Int)] {
    // procfs files report size 0: read until the end rather than by their size.
    let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/smaps"))
    defer { try? handle.close() }
    let smaps = String(decoding: try handle.readToEnd() ?? Data(), as: UTF8.self)
    var result: [(start: String, perms: String, path: String, rss: Int)] = []
    for line in smaps.split(separator: "\n") {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        if let range = fields.first, range.contains("-"), !range.hasSuffix(":"), fields.count >= 5 {
            let start = String(range.split(separator: "-")[0])
            result.append((start, String(fields[1]), fields.count >= 6 ? String(fields[5]) : "", 0))
        } else if line.hasPrefix("Rss:"), !result.isEmpty, fields.count >= 2 {
            result[result.count - 1].rss = Int(fields[1]) ?? 0
        }
    }
    return result
}

@Suite("Idle trim")
struct IdleTrimTests {
    @Test("the code of loaded programs and libraries leaves the resident set; files mapped by other code are never touched")
    func trimsLoadedCodeOnly() async throws {
        try await withTemporaryDirectory { directory in
            let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
            let length = 64 * pageSize
            let path = directory.appendingPathComponent("pages").path
            let content = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
            try Data(content).write(to: URL(fileURLWithPath: path))
            let fd = open(path, O_RDONLY)
            #expect(fd >= 0)
            defer { close(fd) }
            // A clean read-only file mapping that is not a loaded object (it could be unmapped and
            // its address reused at any time, so it is not the trim's business).
            let clean = try #require(mmap(nil, length, PROT_READ, MAP_PRIVATE, fd, 0))
            #expect(clean != MAP_FAILED)
            defer { munmap(clean, length) }
            // Written private pages made read-only afterwards (what RELRO looks like).
            let written = try #require(mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0))
            #expect(written != MAP_FAILED)
            defer { munmap(written, length) }
            var sum = 0
            for offset in stride(from: 0, to: length, by: pageSize) {
                sum &+= Int(clean.load(fromByteOffset: offset, as: UInt8.self))
                written.storeBytes(of: 0xAB, toByteOffset: offset, as: UInt8.self)
            }
            #expect(mprotect(written, length, PROT_READ) == 0, "sum \(sum)")
            let cleanStart = String(UInt(bitPattern: clean), radix: 16)
            let writtenStart = String(UInt(bitPattern: written), radix: 16)
            func code(_ all: [(start: String, perms: String, path: String, rss: Int)]) -> Int {
                all.filter { $0.perms == "r-xp" && $0.path.hasPrefix("/") }.reduce(0) { $0 + $1.rss }
            }
            let before = try mappings()
            #expect(before.first { $0.start == cleanStart }?.rss == length / 1024)

            let released = try #require(IdleTrim.trim(logger: Logger(label: "test")))
            let after = try mappings()
            #expect(released > 0)
            #expect(code(after) < code(before) / 2, "code resident before \(code(before)) KiB, after \(code(after)) KiB")
            #expect(after.first { $0.start == cleanStart }?.rss == length / 1024, "a file mapped by other code stays")
            #expect(after.first { $0.start == writtenStart }?.rss == length / 1024, "written pages stay")
            #expect(Array(UnsafeRawBufferPointer(start: clean, count: length)) == content)
            for offset in stride(from: 0, to: length, by: pageSize) {
                #expect(written.load(fromByteOffset: offset, as: UInt8.self) == 0xAB)
            }
        }
    }
}

@Suite("Listen addresses")
struct ListenAddressTests {
    @Test("IPv4, bracketed IPv6 and localhost are read; names, bad ports and bad literals are not")
    func parsing() {
        #expect(ListenAddress.parse("127.0.0.1:9252") == .success(ListenAddress(host: "127.0.0.1", port: 9252)))
        #expect(ListenAddress.parse("[::1]:0") == .success(ListenAddress(host: "::1", port: 0)))
        #expect(ListenAddress.parse("localhost:80") == .success(ListenAddress(host: "127.0.0.1", port: 80)))
        #expect(ListenAddress.parse("9252") == .failure(.notHostPort))
        #expect(ListenAddress.parse("127.0.0.1:70000") == .failure(.badPort))
        #expect(ListenAddress.parse("myhost:9252") == .failure(.notAnAddress("myhost")))
        #expect(ListenAddress.parse("[::zz]:9252") == .failure(.notAnAddress("[::zz]")))
    }
}
