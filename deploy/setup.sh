#!/usr/bin/env bash
# Installs the Debian packages Mayfly needs to build, test and run VMs. Idempotent; run as root
# (or with sudo available). Swift itself is expected on PATH already.
set -euo pipefail

packages=(
  libcurl4-openssl-dev   # libcurl for the HTTP client (CCurl)
  qemu-system-x86        # the hypervisor
  qemu-utils             # qemu-img: qcow2 overlays
  ovmf                   # UEFI firmware for uefi bundles
  openssh-client         # ssh into guests
  util-linux             # setpriv: QEMU dies with the agent
  openssl                # the tests make a throw-away CA
  python3                # the tests' local HTTPS server
  passt                  # the guests' isolated network (vm.network: isolated, the default)
  cloud-image-utils      # cloud-localds: each clone's cloud-init seed (guest.provision: cloud-init)
  fdisk                  # sfdisk: the tests write partition tables of sample cloud images
  busybox-static cpio e2fsprogs xz-utils kmod dropbear-bin   # the tiny test guest (deploy/images/tiny)
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v swift >/dev/null || { echo "setup: swift is not on PATH (Swift 6.2 or newer is needed)" >&2; exit 1; }
