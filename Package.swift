// swift-tools-version: 6.2
// Mayfly: a CI runner agent that runs every job in its own short-lived QEMU virtual machine.

import PackageDescription

let strictSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "mayfly",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "mayfly", targets: ["mayfly"]),
        .executable(name: "mayfly-bench", targets: ["mayfly-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2", traits: []),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // libcurl, with typed wrappers for its variadic C functions.
        .systemLibrary(
            name: "CCurl",
            pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]
        ),
        // Linux calls that are variadic in C (ioctl FICLONE, OFD fcntl locks, prctl).
        .target(name: "CMayflySystem"),
        // Small shared vocabulary: durations, sizes, secrets, backoff, positioned YAML reading, helper commands.
        .target(
            name: "MayflyCore",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strictSettings
        ),
        // Async HTTP(S) client on libcurl's multi interface; knows nothing of CI protocols.
        .target(
            name: "MayflyHTTP",
            dependencies: [
                "CCurl", "MayflyCore",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // Golden bundles, clones, the auxiliary-storage lock, QEMU; knows nothing of jobs or servers.
        .target(
            name: "MayflyVM",
            dependencies: [
                "MayflyCore", "CMayflySystem",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strictSettings
        ),
        // Reaching a booted guest and running commands in it over SSH (the OpenSSH client).
        .target(
            name: "MayflyGuest",
            dependencies: [
                "MayflyCore", "MayflyVM",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            swiftSettings: strictSettings
        ),
        // GitLab's runner API: registration, job requests, status updates, trace uploads.
        .target(
            name: "MayflyGitLab",
            dependencies: [
                "MayflyCore", "MayflyHTTP",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strictSettings
        ),
        // Configuration, doctor, logging set-up and (later) the job pipeline and daemon.
        .target(
            name: "MayflyAgent",
            dependencies: [
                "MayflyCore", "MayflyHTTP", "MayflyVM", "MayflyGuest", "CMayflySystem",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // The thin command-line front end.
        .executableTarget(
            name: "mayfly",
            dependencies: [
                "MayflyAgent", "MayflyVM", "MayflyCore", "MayflyGitLab",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // Fixtures shared by the test targets: temporary directories, a test PKI, real servers.
        .target(
            name: "MayflyTestSupport",
            dependencies: ["MayflyCore", "MayflyHTTP", .product(name: "Logging", package: "swift-log")],
            path: "Tests/MayflyTestSupport",
            resources: [.copy("Resources")],
            swiftSettings: strictSettings
        ),
        // Benchmarks against baselines measured in the same run (docs/performance.md).
        .executableTarget(
            name: "mayfly-bench",
            dependencies: [
                "MayflyCore", "MayflyVM", "MayflyGuest", "MayflyHTTP",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "MayflyHTTPTests",
            dependencies: ["MayflyHTTP", "MayflyCore", "MayflyTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "MayflyVMTests",
            dependencies: [
                "MayflyVM", "MayflyGuest", "MayflyCore", "MayflyTestSupport", .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "MayflyGitLabTests",
            dependencies: ["MayflyGitLab", "MayflyAgent", "MayflyHTTP", "MayflyCore", "MayflyTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "MayflyAgentTests",
            dependencies: ["MayflyAgent", "MayflyCore", "MayflyVM", "MayflyHTTP", "MayflyTestSupport"],
            swiftSettings: strictSettings
        ),
    ]
)
