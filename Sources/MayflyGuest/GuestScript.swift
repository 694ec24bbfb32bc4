import MayflyCore

/// Turns a job's lines and variables into the POSIX shell script that runs in the guest. Values
/// are single-quoted (the only quoting in which nothing is special), so quotes, newlines, `$`,
/// backticks and any Unicode pass through unchanged. The script goes to the guest over SSH's
/// standard input, never on a command line (`ps` would show it).
public struct GuestScript: Sendable {
    /// Commands run first, not echoed (they print their own progress).
    public var prologue: [String] = []
    public var lines: [String]
    public var variables: [JobVariable]
    public var workingDirectory: String
    /// Stop at the first failing line (`set -e`), as CI scripts expect.
    public var stopOnFirstFailure = true
    /// Print each line before running it (`$ make test`), as gitlab-runner does.
    public var echoLines = true

    public init(lines: [String], variables: [JobVariable], workingDirectory: String) {
        self.lines = lines
        self.variables = variables
        self.workingDirectory = workingDirectory
    }

    public struct InvalidVariable: Error, Sendable, CustomStringConvertible {
        public let name: String
        public var description: String {
            "variable name '\(name)' cannot be exported: use letters, digits and '_', not starting with a digit"
        }
    }

    /// `'…'` with every `'` written as `'\''`.
    public static func quote(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    /// The script text. `MAYFLY_TMP` is the per-run private directory the wrapper creates
    /// (file variables are written there).
    public func render() throws(InvalidVariable) -> String {
        var text = "# written by mayfly\n"
        for variable in variables {
            guard JobVariable.isValidName(variable.name) else { throw InvalidVariable(name: variable.name) }
            if variable.file {
                text += "printf '%s' \(Self.quote(variable.value)) > \"$MAYFLY_TMP/\(variable.name)\"\n"
                text += "export \(variable.name)=\"$MAYFLY_TMP/\(variable.name)\"\n"
            } else {
                text += "export \(variable.name)=\(Self.quote(variable.value))\n"
            }
        }
        text += "mkdir -p \(Self.quote(workingDirectory)) && cd \(Self.quote(workingDirectory)) || exit 1\n"
        if stopOnFirstFailure { text += "set -e\n" }
        for line in prologue { text += line + "\n" }
        for line in lines {
            if echoLines {
                // The echo shows the line as written; masked values are masked on the host side.
                text += "printf '%s\\n' \(Self.quote("$ " + line))\n"
            }
            text += line + "\n"
        }
        return text
    }

    /// The fixed command given to `ssh`: it saves the script from standard input to a private
    /// temporary directory, runs it with standard input from /dev/null (a command that reads its
    /// input must not eat the script) and standard error merged into standard output (one log, in
    /// order), removes the directory, and reports the script's status on its own standard error
    /// as a trailer, so that a lost connection (ssh's 255) is never mistaken for the script's.
    public static let remoteCommand = """
        umask 077; MAYFLY_TMP=$(mktemp -d) || exit 254; export MAYFLY_TMP; \
        cat > "$MAYFLY_TMP/script.sh" || exit 254; \
        sh "$MAYFLY_TMP/script.sh" </dev/null 2>&1; rc=$?; rm -rf "$MAYFLY_TMP"; \
        echo "\(statusTrailer)$rc" >&2; exit $rc
        """

    public static let statusTrailer = "mayfly-script-status="

    /// The script's status from the trailer in ssh's standard error, if the guest got that far.
    public static func status(fromStandardError text: String) -> Int32? {
        for line in text.split(separator: "\n").reversed() where line.hasPrefix(statusTrailer) {
            return Int32(String(line.dropFirst(statusTrailer.count)).trimmingWhitespace())
        }
        return nil
    }
}
