import Foundation
import MayflyCore

/// A clone's cloud-init NoCloud seed: the `user-data` and `meta-data` that give the guest this
/// clone's login key, host key, instance id and hostname, the `network-config` for the NICs
/// Mayfly gives it (see `GuestNetwork`), and the `cidata` volume built from them
/// with `cloud-localds` (Debian's cloud-image-utils). Owns nothing on disk itself: the files live
/// in the clone directory and go with it.
public struct CloudInitSeed: Sendable, Equatable {
    public var instanceID: String
    public var hostname: String
    public var user: String
    /// The OpenSSH public key the guest authorises.
    public var authorizedKey: String
    /// The guest's host key pair (OpenSSH private key text and public key line).
    public var hostPrivateKey: String
    public var hostPublicKey: String
    public var network: GuestNetwork.Mode

    public init(
        instanceID: String, hostname: String, user: String, authorizedKey: String, hostPrivateKey: String, hostPublicKey: String,
        network: GuestNetwork.Mode = .isolated
    ) {
        self.network = network
        self.instanceID = instanceID
        self.hostname = hostname
        self.user = user
        self.authorizedKey = authorizedKey
        self.hostPrivateKey = hostPrivateKey
        self.hostPublicKey = hostPublicKey
    }

    /// A hostname from a clone key: lower case letters, digits and '-', at most 63 characters.
    public static func hostname(forClone key: String) -> String {
        let safe = key.lowercased().map { ($0.isASCII && ($0.isLetter || $0.isNumber)) ? $0 : "-" }
        return String(("mayfly-" + String(safe)).prefix(63)).trimmingCharacters(in: CharacterSet(charactersIn: "-"))
    }

    public var metaData: String {
        "instance-id: \(Self.quoted(instanceID))\nlocal-hostname: \(Self.quoted(hostname))\n"
    }

    /// Network configuration (version 2): DHCP on the uplink NIC and, with `isolated`, the fixed
    /// address of the control NIC that SSH comes in on, with no route through it. NICs are
    /// matched by MAC address, so the guest's interface names do not matter.
    public var networkConfig: String {
        var lines = [
            "version: 2",
            "ethernets:",
            "  uplink:",
            "    match: { macaddress: \"\(GuestNetwork.uplinkMAC)\" }",
            "    dhcp4: true",
        ]
        if network == .isolated {
            lines += [
                "  control:",
                "    match: { macaddress: \"\(GuestNetwork.controlMAC)\" }",
                "    dhcp4: false",
                "    addresses: [ \"\(GuestNetwork.control.guest)/\(GuestNetwork.control.prefixLength)\" ]",
            ]
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The `#cloud-config` user data. Root logs in directly (`disable_root: false`); any other
    /// user is created with passwordless sudo. The image's own host keys are deleted; given
    /// `ssh_keys`, cloud-init generates none, so the guest's only host key is this clone's, which
    /// the client has pinned before the first connection. (`ssh_genkeytypes: []` and `users: []`
    /// would say the same but fail cloud-init 22.4's schema check, which warns on every boot.) Password logins are left as the image has
    /// them (setting `ssh_pwauth` makes cloud-init restart sshd while the first login may run).
    public var userData: String {
        var lines = [
            "#cloud-config",
            "hostname: \(Self.quoted(hostname))",
            "preserve_hostname: false",
            "disable_root: false",
            "ssh_deletekeys: true",
            "ssh_keys:",
            "  ed25519_private: |",
        ]
        lines += hostPrivateKey.split(separator: "\n").map { "    " + $0 }
        lines.append("  ed25519_public: \(Self.quoted(hostPublicKey))")
        if user == "root" {
            lines += ["ssh_authorized_keys:", "  - \(Self.quoted(authorizedKey))"]
        } else {
            lines += [
                "users:",
                "  - name: \(Self.quoted(user))",
                "    shell: /bin/bash",
                "    lock_passwd: true",
                "    sudo: \"ALL=(ALL) NOPASSWD:ALL\"",
                "    ssh_authorized_keys:",
                "      - \(Self.quoted(authorizedKey))",
            ]
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func quoted(_ text: String) -> String {
        "\"" + text.trimmingWhitespace().replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            + "\""
    }

    /// Writes `user-data` and `meta-data` into `sourcesDirectory` and builds the volume at `image`.
    public func write(sourcesDirectory: String, image: String) async throws(VMError) {
        if mkdir(sourcesDirectory, 0o700) != 0 && errno != EEXIST {
            throw .io(operation: "create", path: sourcesDirectory, errno: errno)
        }
        let userDataPath = sourcesDirectory + "/user-data"
        let metaDataPath = sourcesDirectory + "/meta-data"
        let networkConfigPath = sourcesDirectory + "/network-config"
        let files = [(userDataPath, userData), (metaDataPath, metaData), (networkConfigPath, networkConfig)]
        // Written (and fsynced) off the cooperative pool.
        let failure = await BlockingWork.run { () -> StateFile.Failure? in
            for (path, text) in files {
                do throws(StateFile.Failure) {
                    try AtomicFile.write(Data(text.utf8), to: path, mode: 0o600)
                } catch {
                    return error
                }
            }
            return nil
        }
        if let failure { throw .io(operation: "write", path: failure.path, errno: failure.errno) }
        guard ExecutableLookup.find("cloud-localds") != nil else {
            throw .command(
                executable: "cloud-localds", status: "not found",
                stderr: "cloud-init bundles need it to build each clone's seed: install the cloud-image-utils package")
        }
        do {
            _ = try await CommandRunner.run(
                "cloud-localds", ["--network-config=\(networkConfigPath)", image, userDataPath, metaDataPath],
                timeout: .seconds(60)
            ).check()
        } catch {
            throw .command(executable: "cloud-localds", status: error.reason, stderr: error.standardError)
        }
        chmod(image, 0o600)
    }
}
