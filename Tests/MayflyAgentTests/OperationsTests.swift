import Foundation
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
