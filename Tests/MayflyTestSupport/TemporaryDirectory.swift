import Foundation
import MayflyCore

/// A directory under the system's temporary directory that exists for the duration of `body`
/// and is removed afterwards, whether `body` returned or threw.
public func withTemporaryDirectory<T>(
    prefix: String = "mayfly-test", _ body: (URL) async throws -> T
) async throws -> T {
    let directory = try makeTemporaryDirectory(prefix: prefix)
    defer { try? FileManager.default.removeItem(at: directory) }
    return try await body(directory)
}

/// Creates a fresh private directory; the caller removes it.
public func makeTemporaryDirectory(prefix: String = "mayfly-test") throws -> URL {
    let base = URL(fileURLWithPath: NSTemporaryDirectory())
    let directory = base.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8).lowercased())")
    try FileManager.default.createDirectory(
        at: directory, withIntermediateDirectories: true,
        attributes: [.posixPermissions: 0o711])
    return directory
}

/// Polls `condition` every `interval` until it holds or `timeout` passes; returns whether it held.
public func eventually(
    timeout: Duration = .seconds(10), interval: Duration = .milliseconds(50), _ condition: () async throws -> Bool
) async rethrows -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: interval)
    }
    return try await condition()
}

/// Whether a live QEMU process's command line contains `text` (a clone key, a work directory).
public func qemuRunning(matching text: String) -> Bool {
    processRunning { $0.contains("qemu-system") && $0.contains(text) }
}

/// Whether a live (not zombie) process's command line satisfies `matches`.
public func processRunning(where matches: (String) -> Bool) -> Bool {
    let processes = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return processes.contains { name in
        guard let pid = Int32(name), let line = ProcessIdentity.commandLine(of: pid) else { return false }
        return matches(line) && !ProcessIdentity.isZombie(pid)
    }
}
