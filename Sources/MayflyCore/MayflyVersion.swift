/// Mayfly's own version, shown by `mayfly version`, in job logs and to CI servers.
public enum MayflyVersion {
    public static let current = "0.1.0"
}
