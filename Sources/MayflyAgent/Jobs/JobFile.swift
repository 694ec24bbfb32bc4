import Foundation
import MayflyCore

/// A job file for `mayfly exec`: the same things a CI server's job carries.
///
/// ```yaml
/// script: [ "uname -a", "echo $GREETING" ]     # required; a string or a list of lines
/// after_script: [ "echo done" ]                # optional
/// variables:                                   # NAME: value, or NAME: { value, masked, file }
///   GREETING: hello
///   SECRET: { value: s3cr3t-value, masked: true }
/// timeout: 10m                                 # optional; job.timeout caps it
/// after_script_timeout: 5m                     # optional
/// bundle: tiny                                 # optional; else vm.bundle
/// working_directory: /builds/demo              # optional; else the bundle's guest.workdir
/// ```
public enum JobFile {
    static let keys = ["script", "after_script", "variables", "timeout", "after_script_timeout", "bundle", "working_directory"]

    /// Reads a job file; errors name file, line and column. `${NAME}` in values is taken from
    /// `environment`.
    public static func load(path: String, id: String, environment: [String: String] = ProcessInfo.processInfo.environment)
        throws(ConfigurationError) -> Job
    {
        guard let data = FileManager.default.contents(atPath: path) else {
            let reason = FileManager.default.fileExists(atPath: path) ? "cannot be read" : "does not exist"
            throw ConfigurationError(file: path, line: 0, column: 0, message: reason)
        }
        let directory = (path as NSString).deletingLastPathComponent
        return try parse(
            String(decoding: data, as: UTF8.self), file: path, id: id, baseDirectory: directory, environment: environment)
    }

    public static func parse(
        _ text: String, file: String, id: String, baseDirectory: String = ".", environment: [String: String] = [:]
    )
        throws(ConfigurationError) -> Job
    {
        guard let root = try YAMLValue.parse(text, file: file, environment: environment), !root.isNull else {
            throw ConfigurationError(file: file, line: 0, column: 0, message: "is empty; a job file needs at least 'script'")
        }
        let top = try root.mapping(allowed: keys)
        let scriptValue = try top.required("script")
        let script = try scriptValue.stringList()
        if script.isEmpty { throw scriptValue.error("'script' must have at least one line") }
        var job = Job(id: id, script: script)
        if let value = top["after_script"] { job.afterScript = try value.stringList() }
        if let value = top["timeout"] { job.timeout = try value.duration(atLeast: .seconds(1)) }
        if let value = top["after_script_timeout"] { job.afterScriptTimeout = try value.duration(atLeast: .seconds(1)) }
        if let value = top["bundle"] {
            let name = try value.string()
            job.bundle =
                name.contains("/") && !name.hasPrefix("/")
                ? ((baseDirectory as NSString).appendingPathComponent(name) as NSString)
                    .standardizingPath : name
        }
        if let value = top["working_directory"] {
            let directory = try value.string()
            guard directory.hasPrefix("/") else { throw value.error("'working_directory' must be an absolute path in the guest") }
            job.workingDirectory = directory
        }
        if let value = top["variables"] {
            guard case .mapping(let mapping) = value.node else { throw value.error("'variables' must map names to values") }
            for (keyNode, valueNode) in mapping {
                let key = YAMLValue(node: keyNode, file: file, path: "variables", environment: [:])
                let name = try key.string()
                guard JobVariable.isValidName(name) else {
                    throw key.error("'\(name)' is not a variable name: use letters, digits and '_', not starting with a digit")
                }
                let entry = YAMLValue(node: valueNode, file: file, path: "variables.\(name)", environment: environment)
                if case .mapping = valueNode {
                    let fields = try entry.mapping(allowed: ["value", "masked", "file"])
                    job.variables.append(
                        JobVariable(
                            name: name, value: try fields.required("value").string(),
                            masked: try fields["masked"]?.bool() ?? false,
                            file: try fields["file"]?.bool() ?? false))
                } else {
                    job.variables.append(JobVariable(name: name, value: entry.isNull ? "" : try entry.string()))
                }
            }
        }
        return job
    }
}
