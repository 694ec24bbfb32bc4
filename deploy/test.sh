#!/usr/bin/env bash
# The one command that runs Mayfly's tests on a fresh Debian machine: installs what is needed,
# builds the tiny test-guest bundle if it is missing, checks formatting, runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/setup.sh
bash deploy/images/tiny/build.sh
bash deploy/images/tiny/build.sh --boot uefi

echo "test: swift format lint --strict"
swift format lint --strict -r Sources Tests Package.swift

echo "test: swift build --build-tests"
swift build --build-tests

echo "test: swift test"
swift test --skip-build
