#!/usr/bin/env bash
# Installs Mayfly as a systemd service on Debian: the packages it needs, the binary
# (/usr/local/bin/mayfly, built in release mode unless --binary is given), a system user `mayfly`
# in group kvm, /etc/mayfly/mayfly.yaml from the example when there is none, the unit, and the
# default golden bundle: Debian 12 built by deploy/images/debian/build.sh into
# /var/lib/mayfly/bundles/debian-12 when it is not there (--no-image skips it).
# It does not start anything: register a runner and enable the service afterwards (it says how).
# Run as root from the repository. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
image=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --no-image) image=0; shift ;;
    *) echo "install: unknown argument $1" >&2; exit 64 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "install: run as root" >&2; exit 1; }

bash deploy/setup.sh
if [ -z "$binary" ]; then
  swift build -c release
  binary=.build/release/mayfly
fi
install -m 0755 "$binary" /usr/local/bin/mayfly

getent group kvm >/dev/null || groupadd --system kvm
id mayfly >/dev/null 2>&1 || useradd --system --home-dir /var/lib/mayfly --shell /usr/sbin/nologin --groups kvm mayfly
install -d -m 0750 -o root -g mayfly /etc/mayfly
install -d -m 0750 -o mayfly -g mayfly /var/lib/mayfly /var/lib/mayfly/bundles
if [ ! -e /etc/mayfly/mayfly.yaml ]; then
  sed -e 's|^name: builder-01 |# name: builder-01 |' \
      -e 's|^  bundle: debian-12 .*|  bundle: debian-12               # a bundle under /var/lib/mayfly/bundles|' \
      -e '/^servers:/,/^metrics:/{/^metrics:/!d}' config/mayfly.example.yaml > /etc/mayfly/mayfly.yaml
  chown root:mayfly /etc/mayfly/mayfly.yaml
  chmod 0640 /etc/mayfly/mayfly.yaml
fi
install -m 0644 deploy/systemd/mayfly.service /etc/systemd/system/mayfly.service
if [ "$image" = 1 ] && [ ! -e /var/lib/mayfly/bundles/debian-12/bundle.yaml ]; then
  echo "install: building the Debian 12 golden bundle (a few minutes; --no-image skips it)"
  bash deploy/images/debian/build.sh --out /var/lib/mayfly/bundles/debian-12
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

cat <<NEXT
Mayfly is installed. Next:
  1. vm.bundle is debian-12 (/var/lib/mayfly/bundles/debian-12); for other images see docs/images.md
  2. mayfly register --config /etc/mayfly/mayfly.yaml --url https://gitlab.example.com --token glrt-...
     then: chown root:mayfly /etc/mayfly/*.token; chmod 0640 /etc/mayfly/*.token
  3. mayfly doctor --config /etc/mayfly/mayfly.yaml
  4. systemctl enable --now mayfly     (logs: journalctl -u mayfly; reload: systemctl reload mayfly)
NEXT
