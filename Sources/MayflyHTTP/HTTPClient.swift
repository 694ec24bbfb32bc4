import Logging

/// An asynchronous HTTP(S) client on libcurl's multi interface. It owns one `CurlLoop` (one
/// dedicated thread) that runs every request of this client concurrently; `execute` suspends the
/// calling task without blocking a thread. Cancelling the task aborts its transfer promptly.
public final class HTTPClient: Sendable {
    /// Settings that apply to every request of a client.
    public struct Configuration: Sendable {
        public var tls: TLSOptions
        /// `scheme://host:port` of an HTTP proxy; `nil` leaves libcurl's usual environment variables.
        public var proxy: String?
        public var userAgent: String
        /// Default limit for a whole exchange; a request may set its own.
        public var timeout: Duration
        public var connectTimeout: Duration
        /// Responses with larger bodies fail with `HTTPError.responseTooLarge`.
        public var maxResponseBody: Int

        public static let defaultTimeout: Duration = .seconds(60)
        public static let defaultConnectTimeout: Duration = .seconds(15)
        public static let defaultMaxResponseBody = 16 << 20

        public init(
            tls: TLSOptions = TLSOptions(), proxy: String? = nil, userAgent: String = "mayfly",
            timeout: Duration = defaultTimeout, connectTimeout: Duration = defaultConnectTimeout,
            maxResponseBody: Int = defaultMaxResponseBody
        ) {
            self.tls = tls
            self.proxy = proxy
            self.userAgent = userAgent
            self.timeout = timeout
            self.connectTimeout = connectTimeout
            self.maxResponseBody = maxResponseBody
        }
    }

    public let configuration: Configuration
    private let loop: CurlLoop

    public init(configuration: Configuration = Configuration(), logger: Logger) {
        self.configuration = configuration
        self.loop = CurlLoop(name: "mayfly-curl")
        if configuration.tls.insecureSkipVerify {
            logger.warning(
                "TLS certificate verification is OFF (insecure_skip_verify): anyone on the network path can read and change this traffic, tokens included"
            )
        }
    }

    deinit { loop.shutdown() }

    /// Runs `request` and returns the server's answer, whatever its status. Throws
    /// `HTTPError.transport` when no answer came, `HTTPError.responseTooLarge`, or
    /// `CancellationError` when the calling task is cancelled.
    public func execute(_ request: HTTPRequest) async throws -> HTTPResponse {
        try Task.checkCancellation()
        let transfer = try CurlTransfer(request: request, client: configuration)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                transfer.continuation = continuation
                do {
                    try loop.submit(transfer)
                } catch {
                    transfer.continuation = nil
                    continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            transfer.cancelled.store(true, ordering: .releasing)
            loop.wake()
        }
    }

    /// Fails the requests still running with `HTTPError.clientShutDown` and stops the thread.
    public func shutdown() { loop.shutdown() }
}

extension HTTPResponse {
    /// Returns `self` when the status is one of `accepted`, else throws `HTTPError.status` with
    /// the headers and a bounded copy of the body.
    public func expecting(_ accepted: Set<Int>, for request: HTTPRequest) throws(HTTPError) -> HTTPResponse {
        guard accepted.contains(status) else {
            throw .status(
                code: status, headers: headers, body: HTTPError.bounded(body), method: request.method.rawValue,
                url: URLRedaction.redact(request.url))
        }
        return self
    }
}
