/// Why an HTTP exchange failed, by layer: the transport (libcurl could not complete the
/// exchange), the HTTP status (the server answered, but not as the caller wanted), or decoding
/// (the body was not what the caller expected). Each case keeps its evidence.
public enum HTTPError: Error, Sendable, CustomStringConvertible {
    /// libcurl failed: its error code, its message, and the method and URL it was working on.
    case transport(code: Int, message: String, method: String, url: String)
    /// The server answered with a status the caller did not accept. The body kept is bounded.
    case status(code: Int, headers: HTTPHeaders, body: String, method: String, url: String)
    /// The body could not be decoded as the caller expected.
    case decoding(cause: String, body: String, url: String)
    /// The response body was larger than the client's limit.
    case responseTooLarge(limit: Int, url: String)
    /// The client was shut down before or during the exchange.
    case clientShutDown

    /// libcurl's CURLE_OPERATION_TIMEDOUT.
    public static let curlTimeoutCode = 28

    /// The largest body an error keeps, in bytes.
    public static let keptBodyLimit = 2048

    public var isTimeout: Bool {
        if case .transport(let code, _, _, _) = self { return code == Self.curlTimeoutCode }
        return false
    }

    public var statusCode: Int? {
        if case .status(let code, _, _, _, _) = self { return code }
        return nil
    }

    public var description: String {
        switch self {
        case .transport(let code, let message, let method, let url):
            return "HTTP transport error on \(method) \(url): \(message) (curl error \(code))"
        case .status(let code, _, let body, let method, let url):
            let shown = body.isEmpty ? "" : ": \(body)"
            return "HTTP \(code) from \(method) \(url)\(shown)"
        case .decoding(let cause, _, let url):
            return "could not decode the response from \(url): \(cause)"
        case .responseTooLarge(let limit, let url):
            return "the response from \(url) is larger than the \(limit)-byte limit"
        case .clientShutDown:
            return "the HTTP client was shut down"
        }
    }

    /// A body cut to `keptBodyLimit` bytes for keeping in an error.
    static func bounded(_ body: [UInt8]) -> String {
        if body.count <= keptBodyLimit { return String(decoding: body, as: UTF8.self) }
        return String(decoding: body.prefix(keptBodyLimit), as: UTF8.self) + "… (\(body.count) bytes)"
    }
}

/// Hides credentials in URLs before they reach an error or a log: user-info and the values of
/// query parameters that commonly carry tokens.
public enum URLRedaction {
    static let sensitiveParameters: Set<String> = [
        "token", "private_token", "access_token", "job_token", "runner_token", "password", "secret",
        "x-amz-signature", "x-goog-signature", "sig", "signature",
    ]

    public static func redact(_ url: String) -> String {
        var result = url
        // user:password@host → [REDACTED]@host
        if let scheme = result.range(of: "://") {
            let rest = result[scheme.upperBound...]
            let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
            if let at = rest[..<authorityEnd].lastIndex(of: "@") {
                result.replaceSubrange(scheme.upperBound..<at, with: "[REDACTED]")
            }
        }
        guard let question = result.firstIndex(of: "?") else { return result }
        let base = result[..<question]
        let query = result[result.index(after: question)...]
        let parts = query.split(separator: "&", omittingEmptySubsequences: false).map { part -> String in
            guard let equals = part.firstIndex(of: "=") else { return String(part) }
            let name = part[..<equals].lowercased()
            return sensitiveParameters.contains(name) ? "\(part[..<equals])=[REDACTED]" : String(part)
        }
        return base + "?" + parts.joined(separator: "&")
    }
}
