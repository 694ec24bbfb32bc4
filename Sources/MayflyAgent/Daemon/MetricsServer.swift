import Foundation
import Logging
import MayflyCore
import Prometheus
import Synchronization

/// A small HTTP/1.1 server on the `metrics.listen` address: `GET /metrics` (Prometheus text
/// format from the registry) and `GET /health` (200 when the agent is polling and at least one
/// server answered lately, 503 otherwise, with a JSON body saying which). It owns one listening
/// socket and one thread that accepts; each request is answered and the connection closed.
public final class MetricsServer: @unchecked Sendable {
    public let registry: PrometheusCollectorRegistry
    public private(set) var port: Int = 0
    private let host: String
    private let requestedPort: Int
    private let health: @Sendable () -> (healthy: Bool, detail: String)
    private let logger: Logger
    private var listener: Int32 = -1
    private let stopped = Mutex(false)

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// `listen` is a `ListenAddress` (`127.0.0.1:9252`, `[::1]:9252`; port 0 picks a free one).
    public init(
        listen: String, registry: PrometheusCollectorRegistry, logger: Logger,
        health: @escaping @Sendable () -> (healthy: Bool, detail: String)
    ) throws {
        guard case .success(let address) = ListenAddress.parse(listen) else {
            throw Failure(description: "metrics.listen '\(listen)' is not an IP address (or localhost) and port")
        }
        self.host = address.host
        self.requestedPort = address.port
        self.registry = registry
        self.health = health
        self.logger = logger
    }

    /// Binds and starts answering on a thread of its own.
    public func start() throws {
        let ipv6 = host.contains(":")
        let fd = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var bound: Int32
        if ipv6 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = in_port_t(UInt16(requestedPort).bigEndian)
            guard inet_pton(AF_INET6, host, &address.sin6_addr) == 1 else {
                close(fd)
                throw Failure(description: "metrics.listen: '\(host)' is not an IP address")
            }
            bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(requestedPort).bigEndian)
            guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
                close(fd)
                throw Failure(description: "metrics.listen: '\(host)' is not an IP address")
            }
            bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw Failure(description: "cannot listen on \(host):\(requestedPort): \(message)")
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = withUnsafePointer(to: &storage) { pointer in
            ipv6
                ? Int(UInt16(bigEndian: pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_port }))
                : Int(UInt16(bigEndian: pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port }))
        }
        listener = fd
        let thread = Thread { [self] in acceptLoop(fd) }
        thread.name = "mayfly-metrics"
        thread.start()
        logger.info("metrics and health on http://\(ipv6 ? "[\(host)]" : host):\(port)/metrics")
    }

    public func stop() {
        let first = stopped.withLock { stopped -> Bool in
            defer { stopped = true }
            return !stopped
        }
        if first && listener >= 0 { shutdown(listener, Int32(SHUT_RDWR)) }
    }

    private func acceptLoop(_ fd: Int32) {
        while !stopped.withLock({ $0 }) {
            let client = accept(fd, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                break
            }
            answer(client)
        }
        close(fd)
    }

    private func answer(_ client: Int32) {
        defer { close(client) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while request.count < 16384 {
            let count = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            request += buffer.prefix(count)
            if request.suffix(4) == [13, 10, 13, 10]
                || request.contains(10) && String(decoding: request, as: UTF8.self).contains("\r\n\r\n")
            {
                break
            }
        }
        let line = String(decoding: request.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self).split(separator: " ")
        let (status, type, body): (String, String, [UInt8])
        if line.count >= 2, line[0] == "GET" || line[0] == "HEAD" {
            switch line[1].split(separator: "?").first.map(String.init) ?? "" {
            case "/metrics":
                (status, type, body) = ("200 OK", "text/plain; version=0.0.4; charset=utf-8", registry.emitToBuffer())
            case "/health":
                let (healthy, detail) = health()
                (status, type, body) = (healthy ? "200 OK" : "503 Service Unavailable", "application/json", Array(detail.utf8))
            default:
                (status, type, body) = ("404 Not Found", "text/plain", Array("not found\n".utf8))
            }
        } else {
            (status, type, body) = ("405 Method Not Allowed", "text/plain", Array("GET only\n".utf8))
        }
        let head = "HTTP/1.1 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        var response = Array(head.utf8)
        if line.first != "HEAD" { response += body }
        var offset = 0
        while offset < response.count {
            let sent = response.withUnsafeBytes { send(client, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if sent <= 0 { break }
            offset += sent
        }
    }
}
