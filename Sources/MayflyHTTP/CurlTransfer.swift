import CCurl
import MayflyCore
import Synchronization

/// One request in flight: owns its libcurl easy handle, header list and error buffer, and
/// collects the response. Everything but `cancelled` is touched only on the loop thread
/// (libcurl's callbacks run there), which is why it is `@unchecked Sendable`.
final class CurlTransfer: @unchecked Sendable {
    let request: HTTPRequest
    let handle: UnsafeMutableRawPointer
    let maxResponseBody: Int
    let cancelled = Atomic<Bool>(false)
    var continuation: CheckedContinuation<HTTPResponse, any Error>?

    private var headerList: UnsafeMutablePointer<curl_slist>?
    private let errorBuffer: UnsafeMutablePointer<CChar>
    private var uploadBytes: [UInt8] = []
    private var uploadOffset = 0
    private var uploadStream: HTTPBodyStream?
    private var responseHeaders = HTTPHeaders()
    private var responseBody: [UInt8] = []
    private(set) var bodyTooLarge = false

    init(request: HTTPRequest, client: HTTPClient.Configuration) throws {
        guard let handle = curl_easy_init() else {
            throw HTTPError.transport(
                code: -1, message: "curl_easy_init failed", method: request.method.rawValue,
                url: URLRedaction.redact(request.url))
        }
        self.handle = handle
        self.request = request
        self.maxResponseBody = client.maxResponseBody
        self.errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        self.errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        try configure(client)
    }

    deinit {
        curl_easy_cleanup(handle)
        if let headerList { curl_slist_free_all(headerList) }
        errorBuffer.deallocate()
    }

    private func configure(_ client: HTTPClient.Configuration) throws {
        let opaque = Unmanaged.passUnretained(self).toOpaque()
        var failures: [String] = []
        func check(_ code: CURLcode, _ what: String) {
            if code != CURLE_OK { failures.append("\(what): \(String(cString: curl_easy_strerror(code)))") }
        }
        check(mayfly_easy_setopt_string(handle, CURLOPT_URL, request.url), "url")
        check(mayfly_easy_setopt_pointer(handle, CURLOPT_ERRORBUFFER, errorBuffer), "error buffer")
        check(mayfly_easy_setopt_long(handle, CURLOPT_NOSIGNAL, 1), "nosignal")
        // Only HTTP and HTTPS, also after redirects; redirects are not followed (a redirect to
        // another host must not receive the runner's token headers).
        check(mayfly_easy_setopt_string(handle, CURLOPT_PROTOCOLS_STR, "http,https"), "protocols")
        check(mayfly_easy_setopt_string(handle, CURLOPT_REDIR_PROTOCOLS_STR, "http,https"), "redirect protocols")
        check(mayfly_easy_setopt_long(handle, CURLOPT_FOLLOWLOCATION, 0), "follow location")
        check(mayfly_easy_setopt_string(handle, CURLOPT_USERAGENT, client.userAgent), "user agent")
        check(mayfly_easy_setopt_string(handle, CURLOPT_ACCEPT_ENCODING, ""), "accept encoding")

        // TLS: verification always on unless explicitly switched off.
        let verify = client.tls.insecureSkipVerify ? 0 : 1
        check(mayfly_easy_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, verify), "verify peer")
        check(mayfly_easy_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, client.tls.insecureSkipVerify ? 0 : 2), "verify host")
        if let caFile = client.tls.caFile { check(mayfly_easy_setopt_string(handle, CURLOPT_CAINFO, caFile), "CA file") }
        if let certFile = client.tls.certFile {
            check(mayfly_easy_setopt_string(handle, CURLOPT_SSLCERT, certFile), "client certificate")
        }
        if let keyFile = client.tls.keyFile { check(mayfly_easy_setopt_string(handle, CURLOPT_SSLKEY, keyFile), "client key") }
        if let proxy = client.proxy { check(mayfly_easy_setopt_string(handle, CURLOPT_PROXY, proxy), "proxy") }

        let timeout = request.timeout ?? client.timeout
        let connectTimeout = request.connectTimeout ?? client.connectTimeout
        check(mayfly_easy_setopt_long(handle, CURLOPT_TIMEOUT_MS, Int(max(1, timeout.wholeMilliseconds))), "timeout")
        check(
            mayfly_easy_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, Int(max(1, connectTimeout.wholeMilliseconds))),
            "connect timeout")

        // Response callbacks.
        check(mayfly_easy_setopt_data_callback(handle, CURLOPT_WRITEFUNCTION, curlWriteCallback), "write function")
        check(mayfly_easy_setopt_pointer(handle, CURLOPT_WRITEDATA, opaque), "write data")
        check(mayfly_easy_setopt_data_callback(handle, CURLOPT_HEADERFUNCTION, curlHeaderCallback), "header function")
        check(mayfly_easy_setopt_pointer(handle, CURLOPT_HEADERDATA, opaque), "header data")
        check(mayfly_easy_setopt_long(handle, CURLOPT_NOPROGRESS, 0), "progress")
        check(mayfly_easy_setopt_xferinfo_callback(handle, curlProgressCallback), "progress function")
        check(mayfly_easy_setopt_pointer(handle, CURLOPT_XFERINFODATA, opaque), "progress data")

        // Method and body.
        var headers = request.headers
        let method = request.method
        if let body = request.body {
            check(mayfly_easy_setopt_long(handle, CURLOPT_POST, 1), "post")
            check(mayfly_easy_setopt_data_callback(handle, CURLOPT_READFUNCTION, curlReadCallback), "read function")
            check(mayfly_easy_setopt_pointer(handle, CURLOPT_READDATA, opaque), "read data")
            switch body {
            case .bytes(let bytes):
                uploadBytes = bytes
                check(mayfly_easy_setopt_off_t(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(bytes.count)), "body size")
            case .stream(let stream):
                uploadStream = stream
                check(mayfly_easy_setopt_off_t(handle, CURLOPT_POSTFIELDSIZE_LARGE, -1), "body size")
            }
            if method != .post { check(mayfly_easy_setopt_string(handle, CURLOPT_CUSTOMREQUEST, method.rawValue), "method") }
            // libcurl would otherwise add its own form content type and wait for 100-continue.
            if !headers.contains("Content-Type") { headers.add("Content-Type", "") }
            if !headers.contains("Expect") { headers.add("Expect", "") }
        } else if method == .head {
            check(mayfly_easy_setopt_long(handle, CURLOPT_NOBODY, 1), "head")
        } else if method != .get {
            check(mayfly_easy_setopt_string(handle, CURLOPT_CUSTOMREQUEST, method.rawValue), "method")
        }
        for (name, value) in headers {
            // "Name:" with nothing after it removes a header libcurl would add by itself.
            let line = value.isEmpty ? "\(name):" : "\(name): \(value)"
            guard let appended = curl_slist_append(headerList, line) else {
                failures.append("header \(name): out of memory")
                continue
            }
            headerList = appended
        }
        if let headerList { check(mayfly_easy_setopt_slist(handle, CURLOPT_HTTPHEADER, headerList), "headers") }

        if !failures.isEmpty {
            throw HTTPError.transport(
                code: -1, message: "could not set up the request: " + failures.joined(separator: "; "),
                method: method.rawValue, url: URLRedaction.redact(request.url))
        }
    }

    /// Called by the loop when it adds the transfer: `onData` must resume the transfer after
    /// libcurl paused it for want of body bytes.
    func attachStream(onData: @escaping @Sendable () -> Void) {
        uploadStream?.attach(onData: onData)
    }

    // MARK: Callbacks (loop thread)

    fileprivate func receive(_ data: UnsafeRawBufferPointer) -> Int {
        if responseBody.count + data.count > maxResponseBody {
            bodyTooLarge = true
            return 0  // makes libcurl fail the transfer with CURLE_WRITE_ERROR
        }
        responseBody.append(contentsOf: data)
        return data.count
    }

    fileprivate func receiveHeader(_ data: UnsafeRawBufferPointer) -> Int {
        var line = String(decoding: data, as: UTF8.self)
        while line.hasSuffix("\r\n") || line.hasSuffix("\n") { line.removeLast() }
        if line.hasPrefix("HTTP/") {
            // A new response begins (after 100 Continue, or a proxy's CONNECT answer): start over.
            responseHeaders = HTTPHeaders()
        } else if let colon = line.firstIndex(of: ":") {
            let name = String(line[..<colon])
            let value = String(line[line.index(after: colon)...]).trimmingWhitespace()
            responseHeaders.add(name, value)
        }
        return data.count
    }

    fileprivate func send(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        if let uploadStream {
            switch uploadStream.read(into: buffer) {
            case .bytes(let count): return count
            case .end: return 0
            case .pause: return Int(CURL_READFUNC_PAUSE)
            }
        }
        let count = min(buffer.count, uploadBytes.count - uploadOffset)
        if count > 0 {
            uploadBytes.withUnsafeBytes { source in
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[uploadOffset..<uploadOffset + count]))
            }
            uploadOffset += count
        }
        return count
    }

    // MARK: Completion (loop thread)

    /// The outcome once libcurl reports the transfer done with `code`.
    func outcome(code: CURLcode) -> Result<HTTPResponse, any Error> {
        uploadStream?.close()
        if cancelled.load(ordering: .acquiring) { return .failure(CancellationError()) }
        let redactedURL = URLRedaction.redact(request.url)
        if bodyTooLarge { return .failure(HTTPError.responseTooLarge(limit: maxResponseBody, url: redactedURL)) }
        guard code == CURLE_OK else {
            let detail = String(cString: errorBuffer)
            let message = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
            return .failure(
                HTTPError.transport(
                    code: Int(code.rawValue), message: message, method: request.method.rawValue,
                    url: redactedURL))
        }
        var status = 0
        _ = mayfly_easy_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return .success(HTTPResponse(status: status, headers: responseHeaders, body: responseBody))
    }

    func closeStream() { uploadStream?.close() }
}

private func transfer(_ userdata: UnsafeMutableRawPointer?) -> CurlTransfer {
    Unmanaged<CurlTransfer>.fromOpaque(userdata!).takeUnretainedValue()
}

private let curlWriteCallback: mayfly_curl_data_callback = { buffer, size, count, userdata in
    let length = size * count
    guard let buffer, length > 0 else { return 0 }
    return transfer(userdata).receive(UnsafeRawBufferPointer(start: buffer, count: length))
}

private let curlHeaderCallback: mayfly_curl_data_callback = { buffer, size, count, userdata in
    let length = size * count
    guard let buffer, length > 0 else { return 0 }
    return transfer(userdata).receiveHeader(UnsafeRawBufferPointer(start: buffer, count: length))
}

private let curlReadCallback: mayfly_curl_data_callback = { buffer, size, count, userdata in
    let length = size * count
    guard let buffer, length > 0 else { return 0 }
    return transfer(userdata).send(into: UnsafeMutableRawBufferPointer(start: buffer, count: length))
}

private let curlProgressCallback: mayfly_curl_xferinfo_callback = { userdata, _, _, _, _ in
    // A non-zero answer aborts the transfer: this is how cancellation reaches a transfer that
    // libcurl is in the middle of.
    transfer(userdata).cancelled.load(ordering: .relaxed) ? 1 : 0
}
