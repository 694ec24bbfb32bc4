import Foundation
import MayflyCore

/// This host's stable `system_id` for CI servers (GitLab keeps one runner manager per runner and
/// system id): `r_` and 12 random letters and digits, made once and kept in
/// `<work_dir>/state/system_id`.
public enum SystemID {
    public static func load(workDirectory: String) throws -> String {
        let directory = workDirectory + "/state"
        let path = directory + "/system_id"
        if let text = try? String(contentsOfFile: path, encoding: .utf8) {
            let value = text.trimmingWhitespace()
            if value.count >= 3 { return value }
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        let value = "r_" + String((0..<12).map { _ in alphabet.randomElement()! })
        let temporary = path + ".tmp-\(getpid())"
        try value.write(toFile: temporary, atomically: false, encoding: .utf8)
        guard rename(temporary, path) == 0 else { throw CocoaError(.fileWriteUnknown) }
        return value
    }
}
