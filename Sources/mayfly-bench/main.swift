import Foundation
import MayflyCore

/// `mayfly-bench [--only clone,overhead,pickup,throughput,idle,cancel] [--repeat N] [--quick] [--idle-seconds N]`:
/// measures Mayfly against baselines measured in the same run (see docs/performance.md).
let arguments = CommandLine.arguments.dropFirst()
func option(_ name: String) -> String? {
    guard let index = arguments.firstIndex(of: name), arguments.index(after: index) < arguments.endIndex else { return nil }
    return arguments[arguments.index(after: index)]
}
let quick = arguments.contains("--quick")
let only = Set((option("--only") ?? "clone,overhead,pickup,throughput,idle,cancel").split(separator: ",").map(String.init))
let root = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
let executable = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("mayfly").path
let context = BenchContext(
    root: root, work: root.appendingPathComponent(".images/bench"),
    mayfly: option("--mayfly") ?? executable, bundle: option("--bundle") ?? root.appendingPathComponent(".images/tiny").path,
    repeats: Int(option("--repeat") ?? "") ?? (quick ? 2 : 3))

print(
    "# mayfly-bench \(MayflyVersion.current): \(ProcessInfo.processInfo.processorCount) cores, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB, TCG"
)
print("mayfly: \(context.mayfly); bundle: \(context.bundle); repeats: \(context.repeats)\n")
do {
    try FileManager.default.createDirectory(at: context.work, withIntermediateDirectories: true)
    if only.contains("clone") { try await benchClone(context) }
    if only.contains("overhead") { try await benchOverhead(context) }
    if only.contains("pickup") { try await benchPickup(context) }
    if only.contains("throughput") { try await benchThroughput(context, mebibytes: quick ? 32 : 256) }
    if only.contains("idle") { try await benchIdle(context, seconds: Int(option("--idle-seconds") ?? "") ?? (quick ? 15 : 60)) }
    if only.contains("cancel") { try await benchCancel(context) }
} catch {
    FileHandle.standardError.write(Data("mayfly-bench: \(error)\n".utf8))
    exit(1)
}
