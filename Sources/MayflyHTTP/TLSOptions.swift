/// How the client authenticates servers and itself. Verification is on unless
/// `insecureSkipVerify` is set, and the client logs a warning each time it starts that way.
public struct TLSOptions: Sendable, Hashable {
    /// A PEM file of CA certificates to trust instead of the system's.
    public var caFile: String?
    /// A PEM client certificate for mutual TLS, with its key in `keyFile`.
    public var certFile: String?
    public var keyFile: String?
    /// Turns off verification of the server's certificate and host name. Never the default.
    public var insecureSkipVerify: Bool

    public init(caFile: String? = nil, certFile: String? = nil, keyFile: String? = nil, insecureSkipVerify: Bool = false) {
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
        self.insecureSkipVerify = insecureSkipVerify
    }
}
