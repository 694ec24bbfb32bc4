#!/usr/bin/env bash
# The README's first command: installs what Mayfly needs, builds it, and checks this host.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/setup.sh
swift build -c release
mkdir -p .images/work
cat > .images/demo.yaml <<YAML
work_dir: work
vm: { accelerator: auto }
YAML
.build/release/mayfly version
.build/release/mayfly doctor --config .images/demo.yaml
