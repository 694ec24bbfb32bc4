#!/usr/bin/env bash
# The README's first command: installs what Mayfly needs, builds it, builds the tiny test-guest
# bundle, and runs the hello job in a fresh VM with `mayfly exec`, showing the VM's phases and
# the job's output. Run as root on Debian 12 with Swift 6.2+ on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/setup.sh
echo "demo: building mayfly (release)"
swift build -c release
echo "demo: building the tiny guest bundle"
bash deploy/images/tiny/build.sh
.build/release/mayfly version
.build/release/mayfly doctor || true   # informative: warns where KVM cannot be used
echo "demo: running config/examples/hello.yml in a fresh VM"
exec .build/release/mayfly exec config/examples/hello.yml --bundle .images/tiny
