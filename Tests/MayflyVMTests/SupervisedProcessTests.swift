import Foundation
import MayflyTestSupport
import MayflyVM
import Synchronization
import Testing

@Suite("Supervised processes")
struct SupervisedProcessTests {
    /// A `sleep` whose command line no other test uses.
    static func marker() -> String { "\(Int.random(in: 100_000...999_999)).5" }

    @Test("a spawn from a cancelled task starts nothing")
    func cancelledBeforeSpawn() async throws {
        let seconds = Self.marker()
        defer { _ = try? Leftovers.kill(sleeping: seconds) }
        let finished = Atomic<Bool>(false)
        let task = Task { () -> SupervisedProcess? in
            defer { finished.store(true, ordering: .releasing) }
            while !Task.isCancelled { await Task.yield() }
            return try? await SupervisedProcess.spawn("sleep", arguments: [seconds])
        }
        task.cancel()
        let ended = await eventually(timeout: .seconds(10)) { finished.load(ordering: .acquiring) }
        #expect(ended, "the spawn from a cancelled task hung")
        guard ended else { return }
        #expect(await task.value == nil)
        #expect(!processRunning { $0.contains("sleep") && $0.contains(seconds) })
    }

    @Test("a task cancelled while its process starts gets the process (to stop it) or nothing, and never hangs")
    func cancelledDuringSpawn() async throws {
        let seconds = Self.marker()
        defer { _ = try? Leftovers.kill(sleeping: seconds) }
        for attempt in 0..<30 {
            let finished = Atomic<Bool>(false)
            let task = Task { () -> SupervisedProcess? in
                defer { finished.store(true, ordering: .releasing) }
                return try? await SupervisedProcess.spawn("sleep", arguments: [seconds])
            }
            // Cancel at a different moment of the spawn each time.
            try await Task.sleep(for: .microseconds(attempt * 150))
            task.cancel()
            let ended = await eventually(timeout: .seconds(10)) { finished.load(ordering: .acquiring) }
            #expect(ended, "attempt \(attempt): the spawning task hung after its cancellation")
            guard ended else { return }
            if let process = await task.value {
                _ = await process.terminate()
            }
        }
        let gone = await eventually(timeout: .seconds(5)) { !processRunning { $0.contains("sleep") && $0.contains(seconds) } }
        #expect(gone, "every process that was started was handed over and stopped")
    }
}

extension SupervisedProcessTests {
    /// The thread of this process that forked `pid` (its parent, for the parent-death signal).
    static func forkingThread(of pid: Int32) -> String? {
        let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return threads.first { thread in
            let children = (try? String(contentsOfFile: "/proc/self/task/\(thread)/children", encoding: .utf8)) ?? ""
            return children.split(separator: " ").contains("\(pid)")
        }
    }

    @Test("processes are forked by a thread that outlives idle periods (their parent-death signal follows it)")
    func forkedByALastingThread() async throws {
        let first = try await SupervisedProcess.spawn("sleep", arguments: [Self.marker()])
        let thread = try #require(Self.forkingThread(of: first.pid))
        // Dispatch retires a worker after 5 s without work; a process forked by one would be
        // killed then.
        try await Task.sleep(for: .seconds(6))
        #expect(!first.hasExited, "the process outlived 6 s of an idle wait")
        let second = try await SupervisedProcess.spawn("sleep", arguments: [Self.marker()])
        #expect(Self.forkingThread(of: second.pid) == thread, "the same thread forks every process")
        _ = await first.terminate()
        _ = await second.terminate()
    }
}

extension SupervisedProcessTests {
    @Test("waiting for readiness ends ready, with the exit, at the timeout, or at once when cancelled")
    func readiness() async throws {
        let sleeper = try await SupervisedProcess.spawn("sleep", arguments: [Self.marker()])
        #expect(try await sleeper.waitUntilReady(timeout: .seconds(5)) { true } == .ready)
        #expect(try await sleeper.waitUntilReady(timeout: .milliseconds(200)) { false } == .timedOut)
        let waiting = Task { try await sleeper.waitUntilReady(timeout: .seconds(60)) { false } }
        try await Task.sleep(for: .milliseconds(100))
        let clock = ContinuousClock()
        let cancelled = clock.now
        waiting.cancel()
        await #expect(throws: CancellationError.self) { try await waiting.value }
        #expect(clock.now - cancelled < .seconds(2))
        _ = await sleeper.terminate()

        let failing = try await SupervisedProcess.spawn("sh", arguments: ["-c", "exit 3"])
        #expect(try await failing.waitUntilReady(timeout: .seconds(10)) { false } == .exited(.exited(3)))
    }
}

/// Kills leftovers of a failed run, so that a hang does not outlive the test.
enum Leftovers {
    static func kill(sleeping pattern: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/pkill")
        process.arguments = ["-f", "sleep \(pattern)"]
        try process.run()
        process.waitUntilExit()
    }
}
