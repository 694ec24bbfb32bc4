import CMayflySystem
import Foundation
import Logging
import MayflyCore

/// Makes and deletes clones of golden bundles in one work directory. A clone is built in a
/// temporary directory (mode 0700, owner record written first) and renamed into place, so a
/// clone directory is either complete or absent; a crash mid-way leaves a temporary directory
/// with an owner record that the reaper removes.
public struct Cloner: Sendable {
    public let workDirectory: String
    public let strategy: CloneStrategyChoice
    public let runtimeBase: String
    /// The network the clones will boot with: a cloud-init seed describes the guest's NICs.
    public let network: GuestNetwork.Mode
    let logger: Logger

    public init(
        workDirectory: String, strategy: CloneStrategyChoice, runtimeBase: String = RuntimeDirectory.base(),
        network: GuestNetwork.Mode = .isolated, logger: Logger
    ) {
        self.workDirectory = workDirectory
        self.strategy = strategy
        self.runtimeBase = runtimeBase
        self.network = network
        self.logger = logger
    }

    public var clonesPath: String { CloneDirectory.clonesPath(workDirectory: workDirectory) }

    /// What the clone was made with, and how long it took.
    public struct Made: Sendable {
        public let clone: CloneDirectory
        public let strategy: CloneStrategyChoice
        public let record: CloneRecord
        public let duration: Duration
    }

    /// Clones `bundle` for the job (`server`, `job`). The clone's deadline is `lifetime` from now.
    public func makeClone(bundle: BundleDirectory, server: String, job: String, lifetime: Duration) async throws(VMError) -> Made
    {
        let clock = ContinuousClock()
        let started = clock.now
        let key = CloneDirectory.key(server: server, job: job)
        try makeDirectory(workDirectory, mode: 0o755)
        try makeDirectory(clonesPath, mode: 0o700)
        // passt drops from root to nobody and must reach its socket directory inside: others may
        // pass through (not list) the runtime directories when we are root.
        try makeDirectory(runtimeBase, mode: Self.runtimeMode)
        chmod(runtimeBase, Self.runtimeMode)
        let finalPath = clonesPath + "/" + key
        if let existing = CloneRecord.read(from: finalPath + "/owner.json") {
            if existing.owner.isAlive {
                throw .cloneInUse(path: finalPath, owner: existing.owner.pid)
            }
            logger.warning("removing a stale clone of the same job left by a dead agent", metadata: ["vm.clone": "\(finalPath)"])
            remove(CloneDirectory(key: key, path: finalPath, runtimePath: runtimeBase + "/" + key, diskName: ""))
        }

        let chosen = try resolveStrategy(bundle: bundle)
        let diskName = chosen == .overlay ? "disk.qcow2" : "disk.\(bundle.manifest.disk.format.rawValue)"
        let temporaryPath = clonesPath + "/.new-\(key)-\(UUID().uuidString.prefix(8).lowercased())"
        let temporary = CloneDirectory(key: key, path: temporaryPath, runtimePath: runtimeBase + "/" + key, diskName: diskName)
        guard mkdir(temporaryPath, 0o700) == 0 else { throw .io(operation: "create", path: temporaryPath, errno: errno) }
        var renamed = false
        defer { if !renamed { try? FileManager.default.removeItem(atPath: temporaryPath) } }

        let now = Date()
        var record = CloneRecord(
            key: key, server: server, job: job, owner: .current(), createdAt: now,
            deadline: now.addingTimeInterval(lifetime.secondsDouble), strategy: chosen.rawValue, bundle: bundle.path)
        try record.write(to: temporary.ownerPath)
        try await makeDisk(from: bundle, into: temporary.diskPath, strategy: chosen)
        if let nvram = bundle.nvramPath {
            try copySmallFile(from: nvram, to: temporary.nvramPath, mode: 0o600)
        }
        try makeDirectory(temporary.keysPath, mode: 0o700)
        if bundle.manifest.guest.provision != .none {
            try await generateKey(at: temporary.clientKeyPath, comment: "mayfly-client-\(key)")
            try await generateKey(at: temporary.hostKeyPath, comment: "mayfly-host-\(key)")
        }
        if bundle.manifest.guest.provision == .cloudInit {
            let seed = CloudInitSeed(
                instanceID: "mayfly-\(key)-\(UUID().uuidString.prefix(8).lowercased())",
                hostname: CloudInitSeed.hostname(forClone: key), user: bundle.manifest.guest.user,
                authorizedKey: try readText(temporary.clientKeyPath + ".pub"),
                hostPrivateKey: try readText(temporary.hostKeyPath), hostPublicKey: try readText(temporary.hostKeyPath + ".pub"),
                network: network)
            try await seed.write(sourcesDirectory: temporary.seedSourcesPath, image: temporary.seedPath)
        }
        // The clone's creation time is when it became usable; the grace period counts from here.
        record.createdAt = Date()
        try record.write(to: temporary.ownerPath)
        guard rename(temporaryPath, finalPath) == 0 else {
            throw .io(operation: "rename into place", path: finalPath, errno: errno)
        }
        renamed = true
        let clone = CloneDirectory(key: key, path: finalPath, runtimePath: temporary.runtimePath, diskName: diskName)
        do {
            try makeDirectory(temporary.runtimePath, mode: Self.runtimeMode)
        } catch {
            // Nobody has the clone yet: remove it here, or it stays until the agent restarts.
            try? FileManager.default.removeItem(atPath: finalPath)
            throw error
        }
        let duration = clock.now - started
        logger.info(
            "cloned bundle \(bundle.manifest.name) by \(chosen.rawValue) in \(DurationText.seconds(duration))",
            metadata: ["vm.clone": "\(finalPath)", "vm.clone_strategy": "\(chosen.rawValue)"])
        return Made(clone: clone, strategy: chosen, record: record, duration: duration)
    }

    /// Takes over a clone made ahead of time (the warm pool) for a job: its record names the job
    /// and a new deadline from now on; its creation time (and so the grace period) is unchanged.
    public func adopt(_ made: Made, server: String, job: String, lifetime: Duration) throws(VMError) -> Made {
        guard var record = made.clone.record() else {
            throw .io(operation: "read the owner record of", path: made.clone.path, errno: ENOENT)
        }
        record.server = server
        record.job = job
        record.owner = .current()
        record.deadline = Date().addingTimeInterval(lifetime.secondsDouble)
        try record.write(to: made.clone.ownerPath)
        return Made(clone: made.clone, strategy: made.strategy, record: record, duration: made.duration)
    }

    /// The strategy to use for `bundle`: the configured one if it works here (else an error),
    /// or for `auto` the fastest that works.
    public func resolveStrategy(bundle: BundleDirectory) throws(VMError) -> CloneStrategyChoice {
        let capabilities = CloneCapabilities.probe(directory: clonesPath)
        let sameFilesystem = Self.sameFilesystem(bundle.diskPath, clonesPath)
        switch strategy {
        case .auto:
            if capabilities.reflink && sameFilesystem { return .reflink }
            if capabilities.overlay { return .overlay }
            return .copy
        case .reflink:
            guard capabilities.reflink else {
                throw .cloneStrategyUnavailable(strategy: .reflink, reason: capabilities.reflinkReason)
            }
            guard sameFilesystem else {
                throw .cloneStrategyUnavailable(
                    strategy: .reflink, reason: "the bundle (\(bundle.path)) is on another filesystem than \(clonesPath)")
            }
            return .reflink
        case .overlay:
            guard capabilities.overlay else {
                throw .cloneStrategyUnavailable(strategy: .overlay, reason: capabilities.overlayReason)
            }
            return .overlay
        case .copy:
            return .copy
        }
    }

    private func makeDisk(from bundle: BundleDirectory, into destination: String, strategy: CloneStrategyChoice)
        async throws(VMError)
    {
        let golden = bundle.diskPath
        switch strategy {
        case .overlay:
            let format = bundle.manifest.disk.format.rawValue
            do {
                // An absolute backing path: a relative one would be resolved against the overlay's directory.
                _ = try await CommandRunner.run(
                    "qemu-img", ["create", "-q", "-f", "qcow2", "-b", golden, "-F", format, destination], timeout: .seconds(60)
                ).check()
            } catch {
                throw .command(executable: "qemu-img create", status: error.reason, stderr: error.standardError)
            }
        case .reflink:
            let source = open(golden, O_RDONLY | O_CLOEXEC)
            guard source >= 0 else { throw .io(operation: "open", path: golden, errno: errno) }
            defer { close(source) }
            let target = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard target >= 0 else { throw .io(operation: "create", path: destination, errno: errno) }
            defer { close(target) }
            guard mayfly_ficlone(target, source) == 0 else {
                throw .io(operation: "reflink (FICLONE) onto", path: destination, errno: errno)
            }
        case .copy, .auto:
            try await FileCopier.sparseCopy(from: golden, to: destination)
        }
        chmod(destination, 0o600)
    }

    static var runtimeMode: mode_t { geteuid() == 0 ? 0o711 : 0o700 }

    private func readText(_ path: String) throws(VMError) -> String {
        guard let data = FileManager.default.contents(atPath: path) else { throw .io(operation: "read", path: path, errno: EIO) }
        return String(decoding: data, as: UTF8.self)
    }

    private func generateKey(at path: String, comment: String) async throws(VMError) {
        do {
            _ = try await CommandRunner.run(
                "ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], timeout: .seconds(30)
            ).check()
        } catch {
            throw .command(executable: "ssh-keygen", status: error.reason, stderr: error.standardError)
        }
    }

    /// Deletes the clone directory and its runtime directory. Never throws: cleanup must not be
    /// stopped by a file that is already gone; what cannot be removed is logged.
    public func remove(_ clone: CloneDirectory) {
        for path in [clone.path, clone.runtimePath] where FileManager.default.fileExists(atPath: path) {
            do {
                try FileManager.default.removeItem(atPath: path)
            } catch {
                logger.error("could not remove \(path): \(error)", metadata: ["vm.clone": "\(clone.path)"])
            }
        }
    }

    static func sameFilesystem(_ a: String, _ b: String) -> Bool {
        var first = stat()
        var second = stat()
        guard stat(a, &first) == 0, stat(b, &second) == 0 else { return false }
        return first.st_dev == second.st_dev
    }

    private func makeDirectory(_ path: String, mode: mode_t) throws(VMError) {
        if mkdir(path, mode) != 0 && errno != EEXIST { throw .io(operation: "create", path: path, errno: errno) }
    }

    private func copySmallFile(from source: String, to destination: String, mode: mode_t) throws(VMError) {
        guard let data = FileManager.default.contents(atPath: source) else {
            throw .io(operation: "read", path: source, errno: EIO)
        }
        guard FileManager.default.createFile(atPath: destination, contents: data, attributes: [.posixPermissions: Int(mode)])
        else {
            throw .io(operation: "write", path: destination, errno: EIO)
        }
    }
}
