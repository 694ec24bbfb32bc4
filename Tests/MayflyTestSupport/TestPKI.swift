import Foundation

/// A certificate authority made at test time with the `openssl` command, and certificates it
/// signed: one for a server on 127.0.0.1/localhost, one for a client. Also a self-signed server
/// certificate that this CA did not sign. Made once per test process; files live in `directory`.
public struct TestPKI: Sendable {
    public let directory: URL
    public var caCertificate: String { directory.appendingPathComponent("ca.pem").path }
    public var serverCertificate: String { directory.appendingPathComponent("server.pem").path }
    public var serverKey: String { directory.appendingPathComponent("server.key").path }
    public var clientCertificate: String { directory.appendingPathComponent("client.pem").path }
    public var clientKey: String { directory.appendingPathComponent("client.key").path }
    public var rogueCertificate: String { directory.appendingPathComponent("rogue.pem").path }
    public var rogueKey: String { directory.appendingPathComponent("rogue.key").path }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// The shared instance, made on first use.
    public static func shared() throws -> TestPKI {
        try cached.get()
    }

    private static let cached: Result<TestPKI, any Error> = Result {
        try TestPKI(directory: makeTemporaryDirectory(prefix: "mayfly-pki"))
    }

    private init(directory: URL) throws {
        self.directory = directory
        let script = """
            set -e
            cd '\(directory.path)'
            cat > server.ext <<EXT
            subjectAltName = IP:127.0.0.1, DNS:localhost
            extendedKeyUsage = serverAuth
            EXT
            printf 'extendedKeyUsage = clientAuth\\n' > client.ext
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=Mayfly Test CA' 2>/dev/null
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj '/CN=127.0.0.1' 2>/dev/null
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout client.key -out client.csr -subj '/CN=mayfly-client' 2>/dev/null
            openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout rogue.key -out rogue.pem -days 2 -subj '/CN=127.0.0.1' -addext 'subjectAltName=IP:127.0.0.1' 2>/dev/null
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Failure(description: "openssl could not make the test PKI (exit \(process.terminationStatus))")
        }
    }
}
