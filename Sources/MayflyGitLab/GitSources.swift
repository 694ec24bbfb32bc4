import MayflyCore

/// The shell commands that get a job's sources into `CI_PROJECT_DIR` before its script, per
/// `GIT_STRATEGY` (`none`, `fetch` — the default — or `clone`) and `GIT_DEPTH`, from the payload's
/// `git_info`. The repository URL carries the job token; the commands print what they do without
/// it, and the token is masked in the log anyway.
public struct GitSources: Sendable {
    public let strategy: String
    public let repoURL: String?
    public let sha: String?
    public let ref: String?
    public let refspecs: [String]
    public let depth: Int
    public let projectDirectory: String

    public init(payload: JobPayload, projectDirectory: String) {
        strategy = (payload.variable("GIT_STRATEGY") ?? "fetch").lowercased()
        repoURL = payload.gitInfo?.repoURL
        sha = payload.gitInfo?.sha
        ref = payload.gitInfo?.ref
        refspecs = payload.gitInfo?.refspecs ?? []
        depth = Int(payload.variable("GIT_DEPTH") ?? "") ?? payload.gitInfo?.depth ?? 0
        self.projectDirectory = projectDirectory
    }

    /// The commands, each a script line (they run under `set -e` like the rest).
    public func commands() -> [String] {
        guard strategy != "none", let repoURL, let sha else { return [] }
        let directory = shellQuote(projectDirectory)
        let depthArgument = depth > 0 ? " --depth \(depth)" : ""
        let specs = (refspecs.isEmpty ? ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"] : refspecs)
            .map(shellQuote).joined(separator: " ")
        var lines: [String] = []
        let shown = ref.map { " for \($0)" } ?? ""
        if strategy == "clone" {
            lines.append("echo \(shellQuote("Getting sources: fresh clone\(shown) (\(sha.prefix(8)))")); rm -rf \(directory)")
        } else {
            lines.append("echo \(shellQuote("Getting sources: fetching changes\(shown) (\(sha.prefix(8)))"))")
        }
        lines.append(
            "mkdir -p \(directory) && cd \(directory) && { [ -d .git ] || git init -q; } && "
                + "{ git remote set-url origin \(shellQuote(repoURL)) 2>/dev/null || git remote add origin \(shellQuote(repoURL)); }"
        )
        lines.append("git -c advice.detachedHead=false fetch -q --prune\(depthArgument) origin \(specs)")
        lines.append("git checkout -q -f \(shellQuote(sha)) && git clean -q -ffdx")
        return lines
    }
}
