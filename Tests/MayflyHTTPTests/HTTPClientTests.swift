import Foundation
import Logging
import MayflyCore
import MayflyTestSupport
import Testing

@testable import MayflyHTTP

/// What the test server's /echo route reports about the request it received.
struct Echo: Decodable {
    let method: String
    let path: String
    let headers: [[String]]
    let body_length: Int
    let body_sha256: String
    let body: String
    let chunked: Bool

    func header(_ name: String) -> String? {
        headers.first { $0[0].lowercased() == name.lowercased() }?[1]
    }
}

func sha256Hex(_ bytes: [UInt8]) throws -> String {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(at: directory) }
    let file = directory.appendingPathComponent("data")
    try Data(bytes).write(to: file)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
    process.arguments = [file.path]
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    process.waitUntilExit()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    return String(output.prefix(64))
}

let testLogger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

/// One HTTPS server with a CA-signed certificate shared by the tests of this suite.
@Suite("HTTP client over real TLS")
struct HTTPClientTests {
    let pki: TestPKI
    let server: TestHTTPServer
    let client: HTTPClient

    init() async throws {
        pki = try TestPKI.shared()
        server = try await TestHTTPServer(.tls(certificate: pki.serverCertificate, key: pki.serverKey))
        client = HTTPClient(configuration: .init(tls: TLSOptions(caFile: pki.caCertificate)), logger: testLogger)
    }

    @Test(
        "every method carries its headers and body",
        arguments: [
            HTTPMethod.get, .head, .post, .put, .patch, .delete, .options,
        ])
    func methods(method: HTTPMethod) async throws {
        let body: [UInt8]? = [.get, .head].contains(method) ? nil : Array("payload for \(method) ✓".utf8)
        let request = HTTPRequest(
            method: method, url: server.baseURL + "/echo?x=1",
            headers: ["X-Mayfly-Test": "value \(method)", "Content-Type": "text/plain"],
            body: body.map { .bytes($0) })
        let response = try await client.execute(request)
        #expect(response.status == 200)
        #expect(response.headers["x-echo-method"] == method.rawValue)
        if method == .head {
            #expect(response.body.isEmpty)
            return
        }
        let echo = try JSONDecoder().decode(Echo.self, from: Data(response.body))
        #expect(echo.method == method.rawValue)
        #expect(echo.path == "/echo?x=1")
        #expect(echo.header("X-Mayfly-Test") == "value \(method)")
        #expect(echo.header("Expect") == nil)
        if let body {
            #expect(echo.body_length == body.count)
            #expect(echo.body == String(decoding: body, as: UTF8.self))
            #expect(echo.header("Content-Type") == "text/plain")
        } else {
            #expect(echo.body_length == 0)
        }
    }

    @Test("a body without a content type gets none from libcurl")
    func noImplicitContentType() async throws {
        let response = try await client.execute(
            HTTPRequest(method: .post, url: server.baseURL + "/echo", body: .bytes([1, 2, 3])))
        let echo = try JSONDecoder().decode(Echo.self, from: Data(response.body))
        #expect(echo.header("Content-Type") == nil)
        #expect(echo.body_length == 3)
    }

    @Test("20 concurrent requests all complete with their own answers")
    func concurrent() async throws {
        let results = try await withThrowingTaskGroup(of: (Int, Int).self) { group in
            for index in 0..<20 {
                group.addTask {
                    // Each request waits a little on the server so that they really overlap.
                    let response = try await client.execute(HTTPRequest(url: server.baseURL + "/slow?ms=300"))
                    let echo = try await client.execute(
                        HTTPRequest(
                            method: .post, url: server.baseURL + "/echo",
                            body: .bytes(Array(repeating: UInt8(index), count: index + 1))))
                    let decoded = try JSONDecoder().decode(Echo.self, from: Data(echo.body))
                    return (response.status == 200 ? index : -1, decoded.body_length)
                }
            }
            var results: [(Int, Int)] = []
            for try await result in group { results.append(result) }
            return results
        }
        #expect(results.count == 20)
        #expect(Set(results.map(\.0)) == Set(0..<20))
        for (index, length) in results { #expect(length == index + 1) }
    }

    @Test("a streamed upload arrives chunked, complete and in order")
    func streamedUpload() async throws {
        let stream = HTTPBodyStream(capacity: 4096)
        var expected: [UInt8] = []
        var chunks: [[UInt8]] = []
        for index in 0..<50 {
            let chunk = Array("chunk \(index) ".utf8) + Array(repeating: UInt8(65 + index % 26), count: 1000 + index)
            chunks.append(chunk)
            expected += chunk
        }
        let producer = Task { [chunks] in
            for chunk in chunks {
                try await stream.write(chunk)
                try await Task.sleep(for: .milliseconds(5))
            }
            stream.finish()
        }
        let response = try await client.execute(HTTPRequest(method: .put, url: server.baseURL + "/echo", body: .stream(stream)))
        try await producer.value
        let echo = try JSONDecoder().decode(Echo.self, from: Data(response.body))
        #expect(echo.chunked)
        #expect(echo.body_length == expected.count)
        #expect(echo.body_sha256 == (try sha256Hex(expected)))
    }

    @Test("cancelling the task aborts the transfer promptly")
    func cancellation() async throws {
        let clock = ContinuousClock()
        let started = clock.now
        let task = Task { try await client.execute(HTTPRequest(url: server.baseURL + "/slow?ms=10000")) }
        try await Task.sleep(for: .milliseconds(300))
        task.cancel()
        let result = await task.result
        let elapsed = clock.now - started
        #expect(throws: CancellationError.self) { try result.get() }
        #expect(elapsed < .seconds(3))
    }

    @Test("a request that takes longer than its timeout fails as a timeout")
    func timeout() async throws {
        let error = await #expect(throws: HTTPError.self) {
            try await client.execute(HTTPRequest(url: server.baseURL + "/slow?ms=5000", timeout: .milliseconds(400)))
        }
        #expect(error?.isTimeout == true)
    }

    @Test("a status the caller does not accept becomes an HTTP status error with a bounded body")
    func statusError() async throws {
        let request = HTTPRequest(url: server.baseURL + "/status/418?header=X-Why:teapot")
        let response = try await client.execute(request)
        #expect(response.status == 418)
        #expect(response.headers["X-Why"] == "teapot")
        let error = #expect(throws: HTTPError.self) { try response.expecting([200], for: request) }
        #expect(error?.statusCode == 418)
        #expect(error?.description.contains("HTTP 418") == true)

        let big = HTTPResponse(status: 500, body: Array(repeating: 120, count: 10_000))
        let bigError = #expect(throws: HTTPError.self) { try big.expecting([200], for: request) }
        guard case .status(_, _, let body, _, _)? = bigError else {
            Issue.record("not a status error")
            return
        }
        #expect(body.utf8.count < 2200)
    }

    @Test("a response larger than the limit fails instead of growing without bound")
    func responseLimit() async throws {
        let small = HTTPClient(
            configuration: .init(tls: TLSOptions(caFile: pki.caCertificate), maxResponseBody: 1000),
            logger: testLogger)
        let ok = try await small.execute(HTTPRequest(url: server.baseURL + "/bytes?n=1000"))
        #expect(ok.body.count == 1000)
        await #expect(throws: HTTPError.self) { try await small.execute(HTTPRequest(url: server.baseURL + "/bytes?n=100000")) }
    }

    @Test("only http and https are spoken")
    func protocolsRestricted() async throws {
        let error = await #expect(throws: HTTPError.self) { try await client.execute(HTTPRequest(url: "file:///etc/hostname")) }
        guard case .transport(let code, _, _, _)? = error else {
            Issue.record("not a transport error")
            return
        }
        #expect(code == 1)  // CURLE_UNSUPPORTED_PROTOCOL
    }

    @Test("shutting the client down fails the requests still running")
    func shutdownFailsInFlight() async throws {
        let own = HTTPClient(configuration: .init(tls: TLSOptions(caFile: pki.caCertificate)), logger: testLogger)
        let task = Task { try await own.execute(HTTPRequest(url: server.baseURL + "/slow?ms=10000")) }
        try await Task.sleep(for: .milliseconds(300))
        own.shutdown()
        let result = await task.result
        #expect(throws: HTTPError.self) { try result.get() }
        await #expect(throws: HTTPError.self) { try await own.execute(HTTPRequest(url: server.baseURL + "/echo")) }
    }

    @Test("a failed transfer's error names the layer and never the URL's token")
    func transportErrorRedactsURL() async throws {
        let error = await #expect(throws: HTTPError.self) {
            try await client.execute(
                HTTPRequest(url: "https://user:pw@127.0.0.1:1/x?token=s3cr3t&a=b", connectTimeout: .seconds(2)))
        }
        let text = error.map(String.init(describing:)) ?? ""
        #expect(text.contains("transport"))
        #expect(!text.contains("s3cr3t"))
        #expect(!text.contains("pw@"))
        #expect(text.contains("a=b"))
    }
}

@Suite("Proxy")
struct ProxyTests {
    @Test("requests go through the configured HTTP proxy")
    func throughProxy() async throws {
        // The test server also answers proxy-form requests ("GET http://host/path"), which is all a
        // forward proxy sees of a plain-HTTP request: it shows that the request went to it.
        let proxy = try await TestHTTPServer(.plain)
        let client = HTTPClient(configuration: .init(proxy: proxy.baseURL), logger: testLogger)
        let response = try await client.execute(HTTPRequest(url: "http://ci.example.invalid/echo?via=proxy"))
        #expect(response.status == 200)
        let echo = try JSONDecoder().decode(Echo.self, from: Data(response.body))
        #expect(echo.path == "http://ci.example.invalid/echo?via=proxy", "the proxy saw the absolute URL")
        #expect(echo.header("Host") == "ci.example.invalid")
        let direct = HTTPClient(logger: testLogger)
        await #expect(throws: HTTPError.self, "without the proxy the name does not resolve") {
            try await direct.execute(HTTPRequest(url: "http://ci.example.invalid/echo", connectTimeout: .seconds(5)))
        }
    }
}

@Suite("TLS verification")
struct TLSVerificationTests {
    @Test("a server certificate the CA did not sign is refused, unless verification is explicitly off")
    func untrustedServerRefused() async throws {
        let pki = try TestPKI.shared()
        let rogue = try await TestHTTPServer(.tls(certificate: pki.rogueCertificate, key: pki.rogueKey))
        let client = HTTPClient(configuration: .init(tls: TLSOptions(caFile: pki.caCertificate)), logger: testLogger)
        let error = await #expect(throws: HTTPError.self) { try await client.execute(HTTPRequest(url: rogue.baseURL + "/echo")) }
        guard case .transport(let code, _, _, _)? = error else {
            Issue.record("not a transport error")
            return
        }
        #expect(code == 60)  // CURLE_PEER_FAILED_VERIFICATION

        let recorder = RecordingLogHandler.Store()
        let insecure = HTTPClient(
            configuration: .init(tls: TLSOptions(insecureSkipVerify: true)),
            logger: Logger(label: "t") { _ in RecordingLogHandler(store: recorder) })
        let response = try await insecure.execute(HTTPRequest(url: rogue.baseURL + "/echo"))
        #expect(response.status == 200)
        #expect(recorder.messages.contains { $0.level == .warning && $0.message.contains("verification is OFF") })
    }

    @Test("a server that demands a client certificate accepts ours and refuses a client without one")
    func mutualTLS() async throws {
        let pki = try TestPKI.shared()
        let server = try await TestHTTPServer(
            .tls(certificate: pki.serverCertificate, key: pki.serverKey, clientCA: pki.caCertificate))
        let withCertificate = HTTPClient(
            configuration: .init(
                tls: TLSOptions(caFile: pki.caCertificate, certFile: pki.clientCertificate, keyFile: pki.clientKey)),
            logger: testLogger)
        let response = try await withCertificate.execute(HTTPRequest(url: server.baseURL + "/echo"))
        #expect(response.status == 200)

        let without = HTTPClient(configuration: .init(tls: TLSOptions(caFile: pki.caCertificate)), logger: testLogger)
        let error = await #expect(throws: HTTPError.self) {
            try await without.execute(HTTPRequest(url: server.baseURL + "/echo"))
        }
        guard case .transport? = error else {
            Issue.record("expected a transport error, got \(String(describing: error))")
            return
        }
    }
}
