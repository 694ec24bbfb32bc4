import Foundation
import MayflyCore

/// A golden bundle on disk: owns the bundle's layout, so nothing else assembles its paths by
/// hand. The golden files are never written after import; clones point at them or copy them.
public struct BundleDirectory: Sendable {
    public static let manifestName = "bundle.yaml"

    /// The bundle directory, absolute.
    public let path: String
    public let manifest: BundleManifest

    public var manifestPath: String { path + "/" + Self.manifestName }
    public var diskPath: String { file(manifest.disk.file) }
    public var kernelPath: String? { manifest.boot.kernel.map(file) }
    public var initrdPath: String? { manifest.boot.initrd.map(file) }
    public var nvramPath: String? { manifest.nvram.map(file) }
    public var sshKeyPath: String? { manifest.guest.sshKey.map(file) }
    public var hostKeyPath: String? { manifest.guest.hostKey.map(file) }
    /// The UEFI code firmware: the bundle's own, or the host's OVMF.
    public var firmwarePath: String {
        guard let firmware = manifest.boot.firmware else { return Self.defaultFirmware }
        return firmware.hasPrefix("/") ? firmware : file(firmware)
    }

    public static let defaultFirmware = "/usr/share/OVMF/OVMF_CODE_4M.fd"

    public func file(_ relative: String) -> String { path + "/" + relative }

    /// Opens the bundle at `path`: reads and checks `bundle.yaml`, and that every file it names exists.
    public init(path: String) throws(VMError) {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        self.path = (absolute as NSString).standardizingPath
        let manifestPath = self.path + "/" + Self.manifestName
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: self.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw .bundle(path: self.path, problem: "is not a bundle directory (it does not exist)")
        }
        guard let data = FileManager.default.contents(atPath: manifestPath) else {
            throw .bundle(path: self.path, problem: "has no readable \(Self.manifestName)")
        }
        do {
            manifest = try BundleManifest.parse(String(decoding: data, as: UTF8.self), file: manifestPath)
        } catch {
            throw .bundleManifest(error)
        }
        for relative in manifest.referencedFiles where !FileManager.default.fileExists(atPath: file(relative)) {
            throw .bundle(path: self.path, problem: "\(relative), named in \(Self.manifestName), is missing")
        }
        if manifest.boot.mode == .uefi && !FileManager.default.fileExists(atPath: firmwarePath) {
            throw .bundle(path: self.path, problem: "UEFI firmware \(firmwarePath) is missing (apt-get install ovmf)")
        }
    }

    /// Finds a bundle given as a path (anything with a `/`) or a name under `bundlesDirectory`.
    public static func locate(_ nameOrPath: String, bundlesDirectory: String) throws(VMError) -> BundleDirectory {
        if nameOrPath.contains("/") { return try BundleDirectory(path: nameOrPath) }
        let candidate = bundlesDirectory + "/" + nameOrPath
        guard FileManager.default.fileExists(atPath: candidate) else {
            let known =
                (try? FileManager.default.contentsOfDirectory(atPath: bundlesDirectory))?.filter { !$0.hasPrefix(".") }.sorted()
                ?? []
            let hint = known.isEmpty ? "no bundles are installed there" : "installed: " + known.joined(separator: ", ")
            throw .bundle(path: candidate, problem: "no bundle named '\(nameOrPath)' in \(bundlesDirectory) (\(hint))")
        }
        return try BundleDirectory(path: candidate)
    }

    /// A file whose content does not match the manifest, or that is missing or unlisted.
    public struct Mismatch: Sendable, Equatable, CustomStringConvertible {
        public let path: String
        public let expected: String?
        public let actual: String?

        public var description: String {
            switch (expected, actual) {
            case (.some(let expected), .some(let actual)): return "\(path): sha256 is \(actual), the manifest says \(expected)"
            case (.some, .none): return "\(path): listed in the manifest but missing"
            case (.none, _): return "\(path): used by the bundle but has no sha256 in the manifest"
            }
        }
    }

    /// Re-hashes every file and reports each one that differs from the manifest (empty: intact).
    public func verify() async throws(VMError) -> [Mismatch] {
        var mismatches: [Mismatch] = []
        let listed = Set(manifest.files.map(\.path))
        for relative in manifest.referencedFiles where !listed.contains(relative) {
            mismatches.append(Mismatch(path: relative, expected: nil, actual: nil))
        }
        let present = manifest.files.filter { FileManager.default.fileExists(atPath: file($0.path)) }
        for entry in manifest.files where !present.contains(where: { $0.path == entry.path }) {
            mismatches.append(Mismatch(path: entry.path, expected: entry.sha256, actual: nil))
        }
        let hashes = try await SHA256Sum.hash(present.map { file($0.path) })
        for entry in present {
            let actual = hashes[file(entry.path)]
            if actual != entry.sha256 { mismatches.append(Mismatch(path: entry.path, expected: entry.sha256, actual: actual)) }
        }
        return mismatches
    }
}

/// sha256 of files through coreutils' `sha256sum` (fast, and always there on Debian).
public enum SHA256Sum {
    public static func hash(_ paths: [String]) async throws(VMError) -> [String: String] {
        if paths.isEmpty { return [:] }
        let output: CommandRunner.Output
        do {
            output = try await CommandRunner.run("sha256sum", ["--"] + paths, timeout: .seconds(600)).check()
        } catch {
            throw .command(executable: "sha256sum", status: error.reason, stderr: error.standardError)
        }
        var result: [String: String] = [:]
        for line in output.standardOutput.split(separator: "\n") {
            // "<hash>  <path>"; paths with newlines are escaped by sha256sum with a leading backslash.
            let parts = line.split(separator: " ", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let path = parts[1].hasPrefix(" ") ? String(parts[1].dropFirst()) : String(parts[1])
            result[path] = String(parts[0])
        }
        return result
    }
}
