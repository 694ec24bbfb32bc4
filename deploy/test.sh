#!/usr/bin/env bash
# The one command that runs Mayfly's tests on a fresh Debian machine: installs what is needed,
# builds the test-guest bundles (tiny, tiny-uefi, and the Debian 12 golden bundle with the same
# system as a UEFI cloud image, about 70 s from Debian's mirror), checks formatting, runs the whole suite. MAYFLY_SKIP_DEBIAN=1 skips the Debian
# bundle and its end-to-end tests (they need root and a Debian mirror).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/setup.sh
bash deploy/images/tiny/build.sh
bash deploy/images/tiny/build.sh --boot uefi
if [ "${MAYFLY_SKIP_DEBIAN:-0}" != 1 ]; then
  [ -e .images/debian-12/bundle.yaml ] && [ -e .images/debian-12-cloud.qcow2 ] \
    || bash deploy/images/debian/build.sh --cloud-image .images/debian-12-cloud.qcow2
  export MAYFLY_TEST_DEBIAN=1
fi

echo "test: swift format lint --strict"
swift format lint --strict -r Sources Tests Package.swift

echo "test: swift build --build-tests"
swift build --build-tests

echo "test: swift test"
swift test --skip-build
