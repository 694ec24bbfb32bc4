import Foundation

/// A `host:port` to listen on (`metrics.listen`): an IPv4 address, an IPv6 address in brackets,
/// or `localhost` (127.0.0.1); port 0 picks a free one. No names are resolved. The loader checks
/// it (with the file's line and column), the metrics server binds it: both read it here.
public struct ListenAddress: Sendable, Equatable {
    /// The numeric address, without brackets.
    public let host: String
    public let port: Int
    public var isIPv6: Bool { host.contains(":") }

    public enum Problem: Error, Sendable, Equatable {
        case notHostPort
        case badPort
        case notAnAddress(String)
    }

    public static func parse(_ text: String) -> Result<ListenAddress, Problem> {
        guard let colon = text.lastIndex(of: ":") else { return .failure(.notHostPort) }
        let written = String(text[..<colon])
        guard !written.isEmpty, let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            return .failure(.badPort)
        }
        var host = written
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host == "localhost" { host = "127.0.0.1" }
        var v4 = in_addr()
        var v6 = in6_addr()
        guard inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1 else {
            return .failure(.notAnAddress(written))
        }
        return .success(ListenAddress(host: host, port: port))
    }
}
