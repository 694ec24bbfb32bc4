import Foundation
import Logging
import MayflyCore
import MayflyGuest
import MayflyTestSupport
import Testing

@testable import MayflyVM

/// A TCP server on the host that answers every connection with one token line and closes it.
final class TokenServer: Sendable {
    let address: String
    let port: Int
    let token: String
    private let child: TestChild

    init(address: String, token: String) async throws {
        let port = try TestBundle.freeLoopbackPort()
        let script = """
            import socket, sys
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
            while True:
                c, _ = s.accept(); c.sendall(sys.argv[3].encode() + b"\\n"); c.close()
            """
        child = try TestChild("/usr/bin/python3", ["-c", script, address, "\(port)", token])
        self.address = address
        self.port = port
        self.token = token
        let up = await eventually(timeout: .seconds(10)) {
            (try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8))?.contains(
                String(format: ":%04X 00000000:0000 0A", port))
                ?? false
        }
        if !up { throw TestBundle.Missing(description: "the token server on \(address):\(port) did not start") }
    }

    func stop() { child.kill() }
}

/// An address of this host that is not loopback, standing in for "the outside world": a test
/// address added to `lo` when we may (so the test does not depend on the host's own address),
/// else the host's first non-loopback IPv4 address.
struct OutsideAddress {
    let address: String
    let added: Bool

    static let testAddress = "198.51.100.7"

    static func setUp() throws -> OutsideAddress {
        if (try? TestBundle.run("/usr/sbin/ip", ["addr", "replace", "\(testAddress)/32", "dev", "lo"])) != nil {
            return OutsideAddress(address: testAddress, added: true)
        }
        let text = try TestBundle.output("/usr/sbin/ip", ["-4", "-o", "addr", "show", "scope", "global"])
        guard let field = text.split(separator: " ").first(where: { $0.contains("/") && $0.contains(".") }) else {
            throw TestBundle.Missing(description: "no non-loopback IPv4 address to stand for the outside world")
        }
        return OutsideAddress(address: String(field.split(separator: "/")[0]), added: false)
    }

    func tearDown() {
        if added { try? TestBundle.run("/usr/sbin/ip", ["addr", "del", "\(address)/32", "dev", "lo"]) }
    }
}

@Suite("Guest network isolation with a real guest", .serialized)
struct NetworkIsolationTests {
    /// Runs `probes` (address, port) from inside a tiny guest with `network`, through the job
    /// script path (so allowed ports are forwarded), and returns what each probe read.
    func probe(network: GuestNetwork, _ targets: [(String, Int)]) async throws -> [String] {
        try await withGuestSlot {
            try await withTemporaryDirectory { directory in
                let bundle = try BundleDirectory(path: try TestBundle.tinyPath())
                var options = testOptions()
                options.network = network
                let runtime = directory.appendingPathComponent("run")
                let launcher = VMLauncher(
                    workDirectory: directory.path, options: options, logger: Logger(label: "test"), runtimeBase: runtime.path)
                let job = "net-\(network.mode.rawValue)"
                let output = try await launcher.withVM(bundle: bundle, server: "local", job: job, lifetime: .seconds(600)) { vm in
                    #expect((vm.clone.record()?.network != nil) == (network.mode == .isolated), "owner.json names passt")
                    let lines = targets.map { "echo \"probe $(sleep 1 | timeout 5 nc \($0.0) \($0.1) 2>&1 | head -c 80)\"" }
                    let collected = ByteCollector()
                    let outcome = try await ScriptRunner(endpoint: vm.ssh, logger: Logger(label: "test")).run(
                        GuestScript(lines: lines, variables: [], workingDirectory: "/builds"), timeout: .seconds(60)
                    ) { await collected.append($0) }
                    #expect(outcome == .exited(0), "\(outcome)")
                    return await collected.text
                }
                let key = CloneDirectory.key(server: "local", job: job)
                await expectCleanedUp(directory, runtime: runtime, key: key)
                let passtGone = await eventually(timeout: .seconds(5)) {
                    !processRunning { $0.contains("passt") && !$0.contains("qemu-system") && $0.contains("/\(key)/net/") }
                }
                #expect(passtGone, "passt was stopped with its VM")
                let probes = output.split(separator: "\n").filter { $0.hasPrefix("probe") }.map(String.init)
                #expect(probes.count == targets.count, "\(output)")
                return probes
            }
        }
    }

    @Test(
        "isolated: host loopback services are out of reach through the gateway, allowed ports appear on the guest's loopback, the outside is reachable"
    )
    func isolated() async throws {
        let outside = try OutsideAddress.setUp()
        defer { outside.tearDown() }
        let database = try await TokenServer(address: "127.0.0.1", token: "token-of-the-local-database")
        let allowed = try await TokenServer(address: "127.0.0.1", token: "token-of-the-allowed-service")
        let world = try await TokenServer(address: outside.address, token: "token-of-the-outside-world")
        defer { for server in [database, allowed, world] { server.stop() } }

        let probes = try await probe(
            network: GuestNetwork(mode: .isolated, allowHostPorts: [allowed.port]),
            [
                (GuestNetwork.gateway, database.port), (GuestNetwork.gateway, allowed.port), ("127.0.0.1", database.port),
                ("127.0.0.1", allowed.port), (outside.address, world.port), (GuestNetwork.control.host, database.port),
            ])
        #expect(!probes[0].contains(database.token), "the gateway must not lead to the host's loopback: \(probes[0])")
        #expect(!probes[1].contains(allowed.token), "allowed ports are not reached through the gateway: \(probes[1])")
        #expect(!probes[2].contains(database.token), "a port that is not allowed is not forwarded: \(probes[2])")
        #expect(probes[3].contains(allowed.token), "an allowed port appears on the guest's 127.0.0.1: \(probes[3])")
        #expect(probes[4].contains(world.token), "the outside world stays reachable: \(probes[4])")
        #expect(!probes[5].contains(database.token), "the SSH NIC's gateway leads nowhere: \(probes[5])")
    }

    @Test("control: with QEMU's plain user network the same probe does reach the host's loopback (so the test above can fail)")
    func userNetworkReachesLoopback() async throws {
        let database = try await TokenServer(address: "127.0.0.1", token: "token-of-the-local-database")
        defer { database.stop() }
        let probes = try await probe(network: GuestNetwork(mode: .user), [(GuestNetwork.gateway, database.port)])
        #expect(probes[0].contains(database.token), "\(probes)")
    }

    @Test("a host resolver on loopback is replaced by systemd-resolved's upstreams; a reachable one is left to passt")
    func nameservers() async throws {
        try await withTemporaryDirectory { directory in
            let resolv = directory.appendingPathComponent("resolv.conf").path
            let upstream = directory.appendingPathComponent("upstream.conf").path
            try "nameserver 10.1.2.3\nnameserver 127.0.0.1\n".write(toFile: resolv, atomically: true, encoding: .utf8)
            try "nameserver 192.0.2.53\nnameserver 2001:db8::53\n".write(toFile: upstream, atomically: true, encoding: .utf8)
            #expect(PasstProcess.hostNameservers(resolvConf: resolv, resolvedConf: upstream).isEmpty)
            try "# systemd-resolved\nnameserver 127.0.0.53\noptions edns0\n".write(
                toFile: resolv, atomically: true, encoding: .utf8)
            #expect(PasstProcess.hostNameservers(resolvConf: resolv, resolvedConf: upstream) == ["192.0.2.53", "2001:db8::53"])
            let arguments = PasstProcess.arguments(socketPath: "/s", nameservers: ["192.0.2.53"])
            #expect(arguments.suffix(2) == ["--dns", "192.0.2.53"])
        }
    }

    @Test("passt's command line keeps the gateway unmapped and forwards nothing inbound")
    func passtArguments() {
        let arguments = PasstProcess.arguments(socketPath: "/run/mayfly/x/net/passt.sock")
        #expect(arguments.contains("--no-map-gw"))
        #expect(arguments.contains("--foreground"))
        let tcp = try? #require(arguments.firstIndex(of: "--tcp-ports"))
        #expect(tcp.map { arguments[$0 + 1] } == "none")
    }
}

/// Collects a script's output across chunks.
actor ByteCollector {
    private var bytes: [UInt8] = []
    func append(_ chunk: [UInt8]) { bytes += chunk }
    var text: String { String(decoding: bytes, as: UTF8.self) }
}
