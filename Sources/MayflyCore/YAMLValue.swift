import Yams

/// One YAML node of a configuration or job file, with the file it came from and its dotted path
/// (`vm.lock_retry.max`, `servers[0].url`). Every typed read either returns a value or throws a
/// `ConfigurationError` that points at this node's line and column.
public struct YAMLValue {
    public let node: Node
    public let file: String
    public let path: String
    public let environment: [String: String]

    public init(node: Node, file: String, path: String, environment: [String: String]) {
        self.node = node
        self.file = file
        self.path = path
        self.environment = environment
    }

    public var line: Int { node.mark?.line ?? 0 }
    public var column: Int { node.mark?.column ?? 0 }

    /// Parses `text` as one YAML document; `nil` for an empty document.
    public static func parse(_ text: String, file: String, environment: [String: String]) throws(ConfigurationError) -> YAMLValue?
    {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw Self.describe(error, file: file)
        } catch {
            throw ConfigurationError(file: file, line: 0, column: 0, message: "is not valid YAML: \(error)")
        }
        return root.map { YAMLValue(node: $0, file: file, path: "", environment: environment) }
    }

    private static func describe(_ error: YamlError, file: String) -> ConfigurationError {
        func at(_ mark: Mark, _ problem: String, _ context: YamlError.Context?) -> ConfigurationError {
            let detail = context.map { " (\($0.text))" } ?? ""
            return ConfigurationError(
                file: file, line: mark.line, column: mark.column,
                message: "invalid YAML: \(problem)\(detail)")
        }
        switch error {
        case .scanner(let context, let problem, let mark, _): return at(mark, problem, context)
        case .parser(let context, let problem, let mark, _): return at(mark, problem, context)
        case .composer(let context, let problem, let mark, _): return at(mark, problem, context)
        case .duplicatedKeysInMapping(let duplicates, let context):
            let names = Array(Set(duplicates)).sorted().map { "'\($0)'" }.joined(separator: ", ")
            return ConfigurationError(
                file: file, line: context.mark.line, column: context.mark.column,
                message: "duplicate key \(names): each key may appear once")
        case .reader(let problem, _, _, _):
            return ConfigurationError(file: file, line: 0, column: 0, message: "cannot be read as text: \(problem)")
        default:
            return ConfigurationError(file: file, line: 0, column: 0, message: "invalid YAML: \(error)")
        }
    }

    public func error(_ message: String) -> ConfigurationError {
        ConfigurationError(file: file, line: line, column: column, message: message)
    }

    private var shownPath: String { path.isEmpty ? "the document" : "'\(path)'" }

    public var isNull: Bool {
        if case .scalar = node { return node.null != nil }
        return false
    }

    private var kind: String {
        switch node {
        case .scalar: return "a value"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    // MARK: Scalars

    /// The scalar's text with `${NAME}` replaced by the environment variable NAME (`$$` is `$`).
    public func string() throws(ConfigurationError) -> String {
        guard case .scalar(let scalar) = node else { throw error("\(shownPath) must be a string, not \(kind)") }
        return try expand(scalar.string)
    }

    private func expand(_ text: String) throws(ConfigurationError) -> String {
        guard text.contains("$") else { return text }
        var result = ""
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            let next = text.index(after: index)
            if character == "$", next < text.endIndex, text[next] == "$" {
                result.append("$")
                index = text.index(after: next)
            } else if character == "$", next < text.endIndex, text[next] == "{" {
                guard let close = text[next...].firstIndex(of: "}") else {
                    throw error("\(shownPath) has '${' without a closing '}'")
                }
                let name = String(text[text.index(after: next)..<close])
                guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) else {
                    throw error("\(shownPath) refers to '${\(name)}', which is not an environment variable name")
                }
                guard let value = environment[name] else {
                    throw error("\(shownPath) uses the environment variable \(name), which is not set")
                }
                result += value
                index = text.index(after: close)
            } else {
                result.append(character)
                index = next
            }
        }
        return result
    }

    public func int(in range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        let text = try scalarText(expecting: "a whole number")
        guard let value = Int(text) else { throw error("\(shownPath) must be a whole number, not '\(text)'") }
        guard range.contains(value) else {
            throw error("\(shownPath) must be between \(range.lowerBound) and \(range.upperBound), not \(value)")
        }
        return value
    }

    public func bool() throws(ConfigurationError) -> Bool {
        let text = try scalarText(expecting: "true or false")
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error("\(shownPath) must be true or false, not '\(text)'")
        }
    }

    public func duration(atLeast minimum: Duration = .zero) throws(ConfigurationError) -> Duration {
        let text = try scalarText(expecting: "a duration such as 500ms, 5s, 3m or 1h")
        let value: Duration
        do {
            value = try DurationText.parse(text)
        } catch {
            throw self.error("\(shownPath): \(error.description)")
        }
        guard value >= minimum else {
            throw error("\(shownPath) must be at least \(DurationText.format(minimum)), not \(text)")
        }
        return value
    }

    public func size(atLeast minimum: ByteSize = ByteSize(bytes: 0)) throws(ConfigurationError) -> ByteSize {
        let text = try scalarText(expecting: "a size such as 512MiB or 4GiB")
        let value: ByteSize
        do {
            value = try ByteSize.parse(text)
        } catch {
            throw self.error("\(shownPath): \(error.description)")
        }
        guard value >= minimum else { throw error("\(shownPath) must be at least \(minimum), not \(text)") }
        return value
    }

    public func choice<T: RawRepresentable & CaseIterable>(_ type: T.Type) throws(ConfigurationError) -> T
    where T.RawValue == String {
        let names = T.allCases.map(\.rawValue)
        let text = try scalarText(expecting: "one of " + names.joined(separator: ", "))
        if let value = T(rawValue: text) { return value }
        let hint = Suggestion.closest(to: text, in: names).map { "; did you mean '\($0)'?" } ?? ""
        throw error("\(shownPath) must be one of \(names.joined(separator: ", ")), not '\(text)'\(hint)")
    }

    private func scalarText(expecting what: String) throws(ConfigurationError) -> String {
        guard case .scalar = node else { throw error("\(shownPath) must be \(what), not \(kind)") }
        return try string().trimmingWhitespace()
    }

    // MARK: Collections

    /// This node as a mapping whose keys must be among `allowed`; an unknown key is an error
    /// that suggests the closest allowed one.
    public func mapping(allowed: [String]) throws(ConfigurationError) -> YAMLMapping {
        guard case .mapping(let mapping) = node else {
            throw error("\(shownPath) must be a mapping of keys to values, not \(kind)")
        }
        var entries: [(String, YAMLValue)] = []
        for (keyNode, valueNode) in mapping {
            let keyValue = YAMLValue(node: keyNode, file: file, path: path, environment: [:])
            guard case .scalar(let scalar) = keyNode else {
                throw keyValue.error("keys must be plain names, not \(keyValue.kind)")
            }
            let key = scalar.string
            guard allowed.contains(key) else {
                let place = path.isEmpty ? "at the top level" : "in '\(path)'"
                let hint = Suggestion.closest(to: key, in: allowed).map { "; did you mean '\($0)'?" } ?? ""
                throw keyValue.error("unknown key '\(key)' \(place)\(hint)")
            }
            let childPath = path.isEmpty ? key : "\(path).\(key)"
            entries.append((key, YAMLValue(node: valueNode, file: file, path: childPath, environment: environment)))
        }
        return YAMLMapping(owner: self, entries: entries)
    }

    public func sequence() throws(ConfigurationError) -> [YAMLValue] {
        guard case .sequence(let sequence) = node else { throw error("\(shownPath) must be a list, not \(kind)") }
        return sequence.enumerated().map { index, child in
            YAMLValue(node: child, file: file, path: "\(path)[\(index)]", environment: environment)
        }
    }

    /// A list of strings; a single string is taken as a list of one.
    public func stringList() throws(ConfigurationError) -> [String] {
        if case .scalar = node { return [try string()] }
        var result: [String] = []
        for item in try sequence() { result.append(try item.string()) }
        return result
    }
}

/// The entries of a YAML mapping, looked up by key. Keys given as `null` count as absent.
public struct YAMLMapping {
    public let owner: YAMLValue
    public let entries: [(key: String, value: YAMLValue)]

    public subscript(_ key: String) -> YAMLValue? {
        guard let value = entries.first(where: { $0.key == key })?.value, !value.isNull else { return nil }
        return value
    }

    public func contains(_ key: String) -> Bool { self[key] != nil }

    public func required(_ key: String) throws(ConfigurationError) -> YAMLValue {
        if let value = self[key] { return value }
        let place = owner.path.isEmpty ? "at the top level" : "in '\(owner.path)'"
        throw owner.error("missing required key '\(key)' \(place)")
    }
}
