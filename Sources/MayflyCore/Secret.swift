/// A secret string (runner token, job token, masked variable value). It never prints itself:
/// `description`, string interpolation and `dump` all show `[REDACTED]`. Read it with `reveal()`
/// only where it goes on the wire.
public struct Secret: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    private let value: String

    public init(_ value: String) { self.value = value }

    /// The secret itself, for the one place that must send it.
    public func reveal() -> String { value }

    public var isEmpty: Bool { value.isEmpty }
    public var description: String { "[REDACTED]" }
    public var debugDescription: String { "Secret([REDACTED])" }
    public var customMirror: Mirror { Mirror(self, children: [:]) }
}
