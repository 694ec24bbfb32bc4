import Foundation
import MayflyCore
import Yams

/// Adds and removes `servers:` entries in a configuration file's text without disturbing the
/// rest of it (comments, order, other keys), for `mayfly register` and `unregister`. It finds the
/// entries through the YAML nodes' positions and edits whole lines.
public enum ConfigurationEditor {
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let description: String
    }

    /// The lines of one new server entry (block style, two-space list indent).
    public static func entryLines(name: String, url: String, tokenFile: String, caFile: String? = nil) -> [String] {
        ["  - name: \(quote(name))", "    type: gitlab", "    url: \(quote(url))", "    token_file: \(quote(tokenFile))"]
            + (caFile.map { ["    tls: { ca_file: \(quote($0)) }"] } ?? [])
    }

    static func quote(_ text: String) -> String {
        "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    /// `text` with a server entry appended to `servers:` (created if missing).
    public static func addingServer(to text: String, name: String, url: String, tokenFile: String, caFile: String? = nil) throws
        -> String
    {
        var lines = text.isEmpty ? [] : text.components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        let entry = entryLines(name: name, url: url, tokenFile: tokenFile, caFile: caFile)
        guard let root = try Yams.compose(yaml: text), case .mapping(let mapping) = root else {
            return (lines + ["servers:"] + entry).joined(separator: "\n") + "\n"
        }
        guard let (key, value) = mapping.first(where: { $0.key.string == "servers" }), let keyLine = key.mark?.line else {
            return (lines + ["servers:"] + entry).joined(separator: "\n") + "\n"
        }
        guard case .sequence(let sequence) = value else { throw Failure(description: "'servers' is not a list") }
        if sequence.style == .flow || sequence.isEmpty {
            guard sequence.isEmpty else {
                throw Failure(description: "'servers' is written as a flow list; write it as a block list first")
            }
            lines[keyLine - 1] = "servers:"
            lines.insert(contentsOf: entry, at: keyLine)
            return lines.joined(separator: "\n") + "\n"
        }
        let end = blockEnd(lines: lines, after: keyLine)
        lines.insert(contentsOf: entry, at: end)
        return lines.joined(separator: "\n") + "\n"
    }

    /// `text` without the server entry named `name`; also returns that entry's `token_file`.
    public static func removingServer(from text: String, name: String, hostOf: (String) -> String?) throws -> (
        String, tokenFile: String?
    ) {
        var lines = text.components(separatedBy: "\n")
        guard let root = try Yams.compose(yaml: text), case .mapping(let mapping) = root,
            let (key, value) = mapping.first(where: { $0.key.string == "servers" }), let keyLine = key.mark?.line,
            case .sequence(let sequence) = value, sequence.style != .flow
        else { throw Failure(description: "the configuration has no servers list") }
        let items = Array(sequence)
        let end = blockEnd(lines: lines, after: keyLine)
        for (index, item) in items.enumerated() {
            guard case .mapping(let entry) = item else { continue }
            let entryName = entry["name"]?.string ?? entry["url"]?.string.flatMap(hostOf) ?? ""
            guard entryName == name, let first = item.mark?.line else { continue }
            let last = index + 1 < items.count ? (items[index + 1].mark?.line ?? end + 1) - 1 : end
            lines.removeSubrange((first - 1)..<last)
            if items.count == 1 { lines[keyLine - 1] = "servers: []" }
            return (lines.joined(separator: "\n"), entry["token_file"]?.string)
        }
        throw Failure(description: "no server named '\(name)' in the configuration")
    }

    /// The index (0-based) of the first line after the block that starts under `keyLine`
    /// (1-based): the next line that starts at column 1 with something other than a comment.
    static func blockEnd(lines: [String], after keyLine: Int) -> Int {
        var index = keyLine
        var lastContent = keyLine
        while index < lines.count {
            let line = lines[index]
            if let first = line.first, first != " ", first != "#", first != "-", first != "\t" { break }
            if !line.trimmingWhitespace().isEmpty && !line.trimmingWhitespace().hasPrefix("#") { lastContent = index + 1 }
            index += 1
        }
        return lastContent
    }
}
