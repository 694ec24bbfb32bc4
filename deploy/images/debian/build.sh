#!/usr/bin/env bash
# Build Mayfly's Debian 12 (bookworm) golden bundle with debootstrap, from Debian's packages only.
#
#   deploy/images/debian/build.sh [--out DIR] [--cache DIR] [--mirror URL] [--kernel cloud|generic]
#                                 [--no-tuning] [--cloud-image FILE]
#
# Output (default .images/debian-12, relative to the repo root):
#   vmlinuz, initrd.img, disk.qcow2 (4 GiB unpartitioned ext4, root=/dev/vda), bundle.yaml
# --cloud-image FILE also writes FILE from the same root file system: a 4 GiB qcow2 laid out like a
#   distribution's UEFI cloud image (GPT, ESP with systemd-boot + kernel + initrd, ext4 root by
#   PARTUUID), for `mayfly bundle import NAME --cloud-image FILE`.
# The cache (default .images/cache/debian) keeps downloaded .debs and apt lists for rebuilds.
# Needs root (debootstrap, chroot, mount). See README.md next to this script.
set -euo pipefail
umask 022

prog=build.sh
t0=${MAYFLY_T0:-${EPOCHREALTIME/,/.}}
elapsed() { local now=${EPOCHREALTIME/,/.}; awk -v a="$t0" -v b="$now" 'BEGIN{printf "%.1f", b-a}'; }
log() { printf '%s [%6.1fs] %s\n' "$prog" "$(elapsed)" "$*" >&2; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }

orig_args=("$@")
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(cd "$script_dir/../../.." && pwd -P)

name=debian-12
suite=bookworm
out=
cache=
mirror=http://deb.debian.org/debian
security_mirror=http://deb.debian.org/debian-security
kernel_flavour=cloud
tuning=1
cloud_image=
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --out=*) out=${1#*=}; shift ;;
        --cache) cache=${2:?--cache needs a directory}; shift 2 ;;
        --cache=*) cache=${1#*=}; shift ;;
        --mirror) mirror=${2:?--mirror needs a URL}; shift 2 ;;
        --mirror=*) mirror=${1#*=}; shift ;;
        --kernel) kernel_flavour=${2:?--kernel needs cloud or generic}; shift 2 ;;
        --kernel=*) kernel_flavour=${1#*=}; shift ;;
        --no-tuning) tuning=0; shift ;;
        --cloud-image) cloud_image=${2:?--cloud-image needs a file name}; shift 2 ;;
        --cloud-image=*) cloud_image=${1#*=}; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case "$kernel_flavour" in
    cloud) kernel_meta=linux-image-cloud-amd64 ;;
    generic) kernel_meta=linux-image-amd64 ;;
    *) die "--kernel must be cloud or generic, not '$kernel_flavour'" ;;
esac
[ -n "$out" ] || out="$repo_root/.images/$name"
[ -n "$cache" ] || cache="$repo_root/.images/cache/debian"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
case "$cache" in /*) ;; *) cache="$PWD/$cache" ;; esac
out=${out%/}; cache=${cache%/}
case "$out$cache" in *[[:space:]]*) die "--out and --cache must not contain whitespace" ;; esac
if [ -n "$cloud_image" ]; then
    case "$cloud_image" in /*) ;; *) cloud_image="$PWD/$cloud_image" ;; esac
    case "$cloud_image" in *[[:space:]]*) die "--cloud-image must not contain whitespace" ;; esac
    case "$cloud_image" in */) die "--cloud-image needs a file name, not a directory" ;; esac
    [ ! -d "$cloud_image" ] || die "--cloud-image $cloud_image is a directory"
    case "$cloud_image/" in "$out"/*) die "--cloud-image must not be inside the bundle directory $out" ;; esac
fi
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mount need it)"

# Kernel command line. root is the whole first virtio disk (no partition table); the NoCloud seed
# is the second virtio disk (/dev/vdb). See README.md for what each option buys under TCG.
cmdline_tuning=
[ "$tuning" = 0 ] || cmdline_tuning=" quiet mitigations=off init_on_alloc=0 fsck.mode=skip"
cmdline="root=/dev/vda rw console=ttyS0$cmdline_tuning"
disk_size=4G
# Packages on top of debootstrap's minbase (Depends only, never Recommends).
packages=(
    systemd-sysv            # init
    openssh-server          # Mayfly talks to the guest over SSH
    cloud-init              # per-clone identity from the NoCloud seed (host key, login key, hostname)
    ifupdown                # cloud-init 22.4 renders its fallback network config as eni (ifupdown) ...
    isc-dhcp-client         # ... with dhclient, which also writes /etc/resolv.conf (no resolved needed)
    iproute2 netbase        # ip(8); /etc/services, /etc/protocols
    git sudo ca-certificates
    "$kernel_meta"
)
# Units that only cost time (or do nothing useful) in a throw-away CI VM: masked, so that neither
# presets nor package upgrades inside a job bring them back. See README.md for the measurements.
mask_units=(
    apt-daily.timer apt-daily.service apt-daily-upgrade.timer apt-daily-upgrade.service
    dpkg-db-backup.timer dpkg-db-backup.service
    e2scrub_all.timer e2scrub_all.service e2scrub_reap.service
    fstrim.timer fstrim.service man-db.timer man-db.service
    getty@tty1.service getty-static.service
    systemd-journal-flush.service
    dev-hugepages.mount sys-kernel-debug.mount sys-kernel-tracing.mount
    modprobe@dm_mod.service modprobe@efi_pstore.service
)

# ---------------------------------------------------------------- private mount namespace
# Everything below runs in its own mount namespace: the mounts that debootstrap and the chroot
# steps make disappear with this process, even if it is killed.
if [ -z "${MAYFLY_BUILD_NS:-}" ]; then
    command -v unshare >/dev/null 2>&1 || die "unshare (util-linux) is missing"
    export MAYFLY_BUILD_NS=1 MAYFLY_T0=$t0
    exec unshare --mount --propagation private -- "$0" ${orig_args[@]+"${orig_args[@]}"}
fi

# ---------------------------------------------------------------- host tools
apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update (host)"
        apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
}

ensure_tools() {
    local missing=() pair cmd pkg
    export PATH="$PATH:/usr/sbin:/sbin"
    for pair in debootstrap:debootstrap gpgv:gpgv wget:wget mke2fs:e2fsprogs qemu-img:qemu-utils \
                unshare:util-linux flock:util-linux findmnt:util-linux mount:mount chroot:coreutils \
                sha256sum:coreutils; do
        cmd=${pair%%:*}; pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
    if [ -n "$cloud_image" ]; then  # FAT in a file, files into it, GPT on a file (no loop device)
        for pair in mkfs.vfat:dosfstools mmd:mtools mcopy:mtools mdir:mtools sfdisk:fdisk dd:coreutils; do
            cmd=${pair%%:*}; pkg=${pair#*:}
            command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
        done
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
        apt_update_once
        log "installing host packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
            || die "apt-get install ${missing[*]} failed"
    fi
    local v
    v=$(mke2fs -V 2>&1 | sed -n 's/^mke2fs \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n1)
    set -- $v
    [ "${1:-0}" -gt 1 ] || [ "${2:-0}" -ge 43 ] || die "mke2fs ${1:-?}.${2:-?} is too old for -d (need e2fsprogs >= 1.43)"
}

# ---------------------------------------------------------------- chroot helpers
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"; }
apt_opts=(-q -y -o APT::Install-Recommends=false -o APT::Install-Suggests=false -o Acquire::Languages=none
          -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold -o Dpkg::Use-Pty=false)
in_apt() {  # apt-get in the chroot; its output goes to $work/apt.log and is shown only on failure
    printf '\n### apt-get %s\n' "$*" >> "$work/apt.log"
    in_root apt-get "${apt_opts[@]}" "$@" >> "$work/apt.log" 2>&1 \
        || { tail -n 40 "$work/apt.log" >&2; die "apt-get $* failed in the chroot (output above)"; }
}

mounted_under() {  # prints mount points below $1, deepest first
    awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r
}
umount_under() {
    local m
    for m in $(mounted_under "$1"); do umount -l "$m" 2>/dev/null || true; done
}

# ---------------------------------------------------------------- main
ensure_tools
mkdir -p "$cache/debootstrap" "$cache/apt-archives/partial" "$cache/apt-lists/partial"
exec 9>"$cache/.lock"
flock 9

out_parent=$(dirname "$out")
mkdir -p "$out_parent"
work=$(mktemp -d "$out_parent/.$name-work.XXXXXX")
stage="$work/bundle"
mkdir -p "$stage"
old=
cloud_tmp=
cleanup() {
    set +e
    umount_under "$work"
    [ -z "$(mounted_under "$work")" ] && rm -rf --one-file-system "$work"
    [ -n "$old" ] && rm -rf "$old"
    [ -n "$cloud_tmp" ] && rm -f "$cloud_tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

root="$work/root"
mkdir -p "$root"

# 1. debootstrap: minbase (required-priority packages + apt). Everything else comes with apt below,
#    so that it is resolved the way apt does it (Depends only) and comes from the security suite too.
log "debootstrap $suite (minbase) from $mirror"
debootstrap --variant=minbase --components=main --include=lz4 --cache-dir="$cache/debootstrap" \
    "$suite" "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
log "debootstrap done: $(in_root dpkg-query -W -f='.\n' | wc -l) packages"

# 2. apt configuration for the image (kept: it is how jobs install packages) and for this build.
rm -f "$root/etc/apt/sources.list"
cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
# No documentation, manual pages or message translations (like Debian's "slim" container images);
# copyright files stay. Kept in the image, so packages that jobs install are slim too.
cat > "$root/etc/dpkg/dpkg.cfg.d/90-mayfly-nodoc" <<'EOF'
# Mayfly golden image: no docs, man pages or translations (deploy/images/debian/build.sh)
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
EOF
find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

# Never start services inside the chroot.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"

# Root filesystem: the whole first virtio disk. The initramfs uses root= from the command line.
cat > "$root/etc/fstab" <<'EOF'
# Mayfly golden image: the root file system is the whole first virtio disk (no partition table).
/dev/vda  /  ext4  rw,errors=remount-ro  0  0
EOF

# initramfs-tools: only what is needed to mount /dev/vda (MODULES=dep cannot work in a chroot).
mkdir -p "$root/etc/initramfs-tools/conf.d"
cat > "$root/etc/initramfs-tools/conf.d/90-mayfly.conf" <<'EOF'
# Mayfly golden image: a small initramfs with the modules listed in /etc/initramfs-tools/modules.
MODULES=list
# Under TCG, decompressing costs more than reading a few more MB.
COMPRESS=lz4
# Root is ext4 (it cannot be probed from the chroot): include e2fsck. fsck.mode=skip skips it at boot.
FSTYPE=ext4
EOF
cat >> "$root/etc/initramfs-tools/modules" <<'EOF'
# Mayfly golden image: root on virtio-blk (virtio-pci) with ext4.
virtio_pci
virtio_blk
ext4
crc32c_generic
EOF

# 3. packages: security updates + what Mayfly needs.
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
mount --bind "$cache/apt-archives" "$root/var/cache/apt/archives"
mount --bind "$cache/apt-lists" "$root/var/lib/apt/lists"
log "apt-get update (chroot)"
in_apt update
log "apt-get dist-upgrade"
in_apt dist-upgrade
pkgs=$(printf '%s\n' "${packages[@]}" | sed 's/#.*//' | tr -s ' \n' ' ')
log "apt-get install $pkgs"
# shellcheck disable=SC2086
in_apt install $pkgs
in_apt autoremove --purge
if [ -n "$cloud_image" ]; then
    # systemd-boot for the cloud image's ESP, from the same suite as the image. Only downloaded (into
    # the .deb cache), never installed: the root file system stays the same as without --cloud-image.
    log "downloading systemd-boot-efi (--cloud-image; not installed in the image)"
    in_apt install --download-only systemd-boot-efi
    sdboot_ver=$(in_root apt-cache show --no-all-versions systemd-boot-efi | sed -n 's/^Version: //p' | head -n1)
    sdboot_deb=/var/cache/apt/archives/systemd-boot-efi_${sdboot_ver//:/%3a}_amd64.deb
    [ -n "$sdboot_ver" ] && [ -f "$root$sdboot_deb" ] || die "systemd-boot-efi $sdboot_ver was not downloaded ($sdboot_deb)"
    in_root sh -c 'dpkg-deb --fsys-tarfile "$1" | tar -xOf - ./usr/lib/systemd/boot/efi/systemd-bootx64.efi' _ "$sdboot_deb" \
        > "$work/systemd-bootx64.efi" || die "no systemd-bootx64.efi in $sdboot_deb"
    [ "$(head -c 2 "$work/systemd-bootx64.efi")" = MZ ] || die "systemd-bootx64.efi from $sdboot_deb is not a PE image"
    [ "$(in_root dpkg-query -W -f='${db:Status-Status}' systemd-boot-efi 2>/dev/null || true)" != installed ] \
        || die "systemd-boot-efi got installed in the image"
    log "systemd-boot-efi $sdboot_ver: systemd-bootx64.efi $(stat -c %s "$work/systemd-bootx64.efi") bytes"
fi
umount "$root/var/lib/apt/lists" "$root/var/cache/apt/archives"
log "installed: $(in_root dpkg-query -W -f='.\n' | wc -l) packages"

# 4. kernel + initramfs, checked.
kver=$(cd "$root/boot" && ls vmlinuz-* 2>/dev/null | sed 's/^vmlinuz-//' | sort -V | tail -n1)
[ "$(cd "$root/boot" && ls vmlinuz-* | wc -l)" = 1 ] || die "more than one kernel in /boot: $(ls "$root/boot")"
[ -n "$kver" ] && [ -f "$root/boot/vmlinuz-$kver" ] && [ -f "$root/boot/initrd.img-$kver" ] \
    || die "kernel or initramfs missing in /boot (kver='$kver')"
in_root lsinitramfs "/boot/initrd.img-$kver" > "$work/initrd.list"
builtin=$(cat "$root/lib/modules/$kver/modules.builtin")
for m in virtio_pci virtio_blk ext4; do
    if grep -qE "/$m\.ko(\.[a-z]+)?\$" "$work/initrd.list"; then continue; fi
    if printf '%s\n' "$builtin" | grep -qE "/$m\.ko\$"; then continue; fi
    die "initramfs for $kver has no $m (neither a module in it nor built into the kernel)"
done
if [ -n "$cloud_image" ]; then
    # The cloud image's root is a partition named by PARTUUID: the initramfs resolves root= with
    # blkid (scripts/functions: resolve_device), so blkid and that code must be in it.
    grep -qE '^(usr/)?s?bin/blkid$' "$work/initrd.list" || die "initramfs for $kver has no blkid (needed for root=PARTUUID=)"
    grep -q 'PARTUUID=\*' "$root/usr/share/initramfs-tools/scripts/functions" \
        || die "initramfs-tools' resolve_device does not handle PARTUUID="
fi
cp "$root/boot/vmlinuz-$kver" "$stage/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$stage/initrd.img"
log "kernel $kver: vmlinuz $(stat -c %s "$stage/vmlinuz") bytes, initrd.img $(stat -c %s "$stage/initrd.img") bytes"

# 5. guest configuration.
mkdir -p "$root/etc/cloud/cloud.cfg.d"
cat > "$root/etc/cloud/cloud.cfg.d/90_mayfly.cfg" <<'EOF'
# Mayfly golden image (deploy/images/debian/build.sh).
# Each clone gets a NoCloud seed (ISO9660, label cidata) as its second virtio disk. Listing only
# NoCloud avoids waiting on metadata-service timeouts. Keep the list on one line (ds-identify).
datasource_list: [ NoCloud, None ]
# Mayfly logs in as root (bundle.yaml guest.user); Debian's default (true) would make root's key
# print "Please login as the user debian" instead of running the command.
disable_root: false
# Add "127.0.1.1 <hostname>" to /etc/hosts so that sudo and others resolve the clone's hostname.
manage_etc_hosts: localhost
EOF
# A preset system locale: cloud-init's locale module otherwise runs locale-gen en_US.UTF-8 on
# every first boot (slow under emulation). C.UTF-8 is built into glibc.
printf 'LANG=C.UTF-8\n' > "$root/etc/default/locale"
printf 'debian\n' > "$root/etc/hostname"
cat > "$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
install -d -m 0755 -o root -g root "$root/builds"

# Boot-time tuning for a throw-away VM under TCG (skipped with --no-tuning, to measure it).
tune_boot() {
cat > "$root/etc/cloud/cloud.cfg.d/91_mayfly-modules.cfg" <<'EOF'
# Mayfly golden image (deploy/images/debian/build.sh).
# Modules that do nothing in this image (no snap, no rsyslog, no partition to grow, no chef...)
# are left out: each one costs time under emulation. Everything a seed is likely to use stays.
cloud_init_modules:
 - seed_random
 - bootcmd
 - write-files
 - resizefs
 - disk_setup
 - mounts
 - set_hostname
 - update_hostname
 - update_etc_hosts
 - ca-certs
 - users-groups
 - ssh
cloud_config_modules:
 - locale
 - set-passwords
 - timezone
 - runcmd
cloud_final_modules:
 - package-update-upgrade-install
 - write-files-deferred
 - scripts-vendor
 - scripts-per-once
 - scripts-per-boot
 - scripts-per-instance
 - scripts-user
 - phone-home
 - final-message
 - power-state-change
EOF
# Journal in RAM only (/run/log/journal): no flush to disk at boot, no journal files in the clone.
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '# Mayfly golden image: throw-away VM, keep the journal in RAM.\n[Journal]\nStorage=volatile\n' \
    > "$root/etc/systemd/journald.conf.d/90-mayfly.conf"
for u in "${mask_units[@]}"; do ln -sfn /dev/null "$root/etc/systemd/system/$u"; done
# Modules that udev would load at boot for the emulated CPU (-cpu max shows SVM/VMX, AES-NI, SHA,
# PCLMUL): nested KVM under TCG is useless, and the kernel's accelerated crypto drivers are not
# needed (sshd and TLS do their crypto in user space). crc32c_intel (ext4 checksums) stays.
{
    echo "# Mayfly golden image: modules not worth loading at boot in a throw-away TCG guest."
    for m in kvm_amd kvm_intel kvm irqbypass aesni_intel ghash_clmulni_intel sha1_ssse3 sha256_ssse3 \
             sha512_ssse3 crct10dif_pclmul crc32_pclmul polyval_clmulni serio_raw; do
        echo "blacklist $m"
    done
} > "$root/etc/modprobe.d/90-mayfly-blacklist.conf"
# sshd: no "sshd -t" before the start (one more sshd run on the way to SSH), no motd scripts on
# every login (pam_motd runs /etc/update-motd.d/* for each ssh command; about 0.2 s under TCG).
mkdir -p "$root/etc/systemd/system/ssh.service.d"
printf '# Mayfly golden image: skip the config test run before sshd starts.\n[Service]\nExecStartPre=\n' \
    > "$root/etc/systemd/system/ssh.service.d/90-mayfly.conf"
sed -i 's/^session[[:space:]]\+optional[[:space:]]\+pam_motd\.so/# Mayfly: no motd (slow under TCG): &/' "$root/etc/pam.d/sshd"
grep -q '^# Mayfly: no motd' "$root/etc/pam.d/sshd" || die "could not disable pam_motd in /etc/pam.d/sshd"
}
if [ "$tuning" = 1 ]; then tune_boot; else log "--no-tuning: stock boot configuration"; fi

# 6. per-clone identity and build leftovers out.
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
rm -f "$root/usr/sbin/policy-rc.d"
: > "$root/etc/resolv.conf"
umount "$root/dev/pts" "$root/sys" "$root/proc"
[ -z "$(mounted_under "$root")" ] || die "still mounted under $root: $(mounted_under "$root" | tr '\n' ' ')"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
       "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old "$root"/var/log/apt/* \
       "$root"/var/log/*.log "$root"/var/log/journal/* "$root"/var/lib/cloud/* "$root"/var/log/cloud-init* \
       "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.bash_history "$root"/debootstrap
mkdir -p "$root/var/lib/apt/lists/partial"
[ -z "$(ls -A "$root/var/lib/cloud" 2>/dev/null)" ] || die "cloud-init state found in the image"

# 7. disk: unpartitioned ext4 from the tree (no loop device), as an uncompressed qcow2.
log "mkfs.ext4 -d ($(du -sm "$root" | cut -f1) MiB of files) into a $disk_size raw image"
truncate -s "$disk_size" "$work/disk.raw"
mkfs.ext4 -q -F -L mayfly-root -d "$root" "$work/disk.raw" >&2
log "qemu-img convert -O qcow2"
qemu-img convert -q -f raw -O qcow2 "$work/disk.raw" "$stage/disk.qcow2"
rm -f "$work/disk.raw"

# 8. (--cloud-image) the same tree as a UEFI cloud image, without loop devices or mounts:
#    GPT on a sparse raw file (sfdisk), the ESP (FAT32, mkfs.vfat + mtools) and the ext4 root
#    (mkfs.ext4 -d) made as files and dd'ed into place, then an uncompressed qcow2. The layout follows
#    Debian's and Ubuntu's cloud images: ESP is partition 15 at 1 MiB, root is partition 1 after it,
#    up to the end of the disk (where growpart could grow it; this image has no growpart). See README.md.
build_cloud_image() {
    local c="$work/cloud" esp_mib=127 root_start_mib=128 root_start root_size
    local disk_guid esp_partuuid root_partuuid root_fsuuid esp_volid cloud_cmdline disk_bytes
    mkdir -p "$c"
    disk_guid=$(cat /proc/sys/kernel/random/uuid)
    esp_partuuid=$(cat /proc/sys/kernel/random/uuid)
    root_partuuid=$(cat /proc/sys/kernel/random/uuid)
    root_fsuuid=$(cat /proc/sys/kernel/random/uuid)
    esp_volid=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
    cloud_cmdline="root=PARTUUID=$root_partuuid rw console=ttyS0$cmdline_tuning"

    log "cloud image: GPT (sfdisk) on a sparse $disk_size raw file"
    truncate -s "$disk_size" "$c/disk.raw"
    disk_bytes=$(stat -c %s "$c/disk.raw")
    sfdisk -q --no-reread --no-tell-kernel "$c/disk.raw" > "$c/sfdisk.log" 2>&1 <<EOF || { cat "$c/sfdisk.log" >&2; die "sfdisk failed"; }
label: gpt
label-id: $disk_guid
unit: sectors
first-lba: 2048
$c/disk.raw15 : start=2048, size=$(( esp_mib * 2048 )), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$esp_partuuid, name="EFI System Partition"
$c/disk.raw1 : start=$(( root_start_mib * 2048 )), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$root_partuuid, name="root"
EOF
    # sfdisk aligns the end of the last partition; take its real size from the table.
    read -r root_start root_size < <(sfdisk -d "$c/disk.raw" | sed -n 's|^.*disk\.raw1 : start= *\([0-9]*\), size= *\([0-9]*\),.*|\1 \2|p')
    [ "${root_start:-0}" = $(( root_start_mib * 2048 )) ] && [ "${root_size:-0}" -gt 0 ] \
        || die "unexpected partition table: $(sfdisk -d "$c/disk.raw" | tr '\n' ' ')"

    # The ESP: systemd-boot as the removable-media boot path, kernel + initrd, one entry.
    printf 'timeout 0\ndefault debian.conf\neditor no\n' > "$c/loader.conf"
    {
        echo "title Debian 12 (Mayfly)"
        echo "linux /debian/vmlinuz"
        echo "initrd /debian/initrd.img"
        echo "options $cloud_cmdline"
    } > "$c/debian.conf"
    mkfs.vfat -F 32 -n ESP -i "$esp_volid" -C "$c/esp.img" $(( esp_mib * 1024 )) > "$c/mkfs.vfat.log" 2>&1 \
        || { cat "$c/mkfs.vfat.log" >&2; die "mkfs.vfat failed"; }
    (
        export MTOOLS_SKIP_CHECK=1
        mmd -i "$c/esp.img" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/debian
        mcopy -i "$c/esp.img" "$work/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
        mcopy -i "$c/esp.img" "$c/loader.conf" ::/loader/loader.conf
        mcopy -i "$c/esp.img" "$c/debian.conf" ::/loader/entries/debian.conf
        mcopy -i "$c/esp.img" "$stage/vmlinuz" ::/debian/vmlinuz
        mcopy -i "$c/esp.img" "$stage/initrd.img" ::/debian/initrd.img
    ) || die "mtools could not fill the ESP"

    # The root: the same tree with an fstab that names the partition (the seed is another virtio
    # disk, and the ESP is not mounted). The kernel-boot disk above is already made.
    cat > "$root/etc/fstab" <<EOF
# Mayfly cloud image: root is the ext4 partition 1, by PARTUUID (device names are not stable: the
# NoCloud seed is another virtio disk). The ESP (partition 15: systemd-boot, kernel, initrd) is not mounted.
PARTUUID=$root_partuuid  /  ext4  rw,errors=remount-ro  0  0
EOF
    truncate -s $(( root_size * 512 )) "$c/root.img"
    mkfs.ext4 -q -F -L mayfly-root -U "$root_fsuuid" -d "$root" "$c/root.img" >&2

    log "cloud image: dd the ESP and the root into place, qemu-img convert -O qcow2"
    # iflag=direct: the root file is ~4 GiB of mostly holes; read through the page cache, every hole
    # page gets allocated and zeroed (2-9 s here), with O_DIRECT it takes ~1 s. Both sizes are MiB
    # multiples, as O_DIRECT needs. Falls back to buffered reads where O_DIRECT is not supported.
    place() {  # place FILE START_MIB
        dd if="$1" of="$c/disk.raw" bs=1M seek="$2" conv=notrunc,sparse iflag=direct status=none 2>/dev/null \
            || dd if="$1" of="$c/disk.raw" bs=1M seek="$2" conv=notrunc,sparse status=none \
            || die "dd $1 into the cloud image failed"
    }
    place "$c/esp.img" 1
    place "$c/root.img" "$root_start_mib"
    rm -f "$c/esp.img" "$c/root.img"
    [ "$(stat -c %s "$c/disk.raw")" = "$disk_bytes" ] \
        || die "the cloud image's raw file changed size (a file system is larger than its partition)"
    sfdisk -q -V "$c/disk.raw" > "$c/verify.log" 2>&1 || { cat "$c/verify.log" >&2; die "sfdisk --verify failed on the cloud image"; }
    qemu-img convert -q -f raw -O qcow2 "$c/disk.raw" "$c/cloud.qcow2"
    rm -f "$c/disk.raw"
    chmod 0444 "$c/cloud.qcow2"
    # Next to FILE, so that the final rename is atomic.
    cloud_tmp=$(mktemp "$(dirname "$cloud_image")/.$(basename "$cloud_image").XXXXXX")
    mv -f "$c/cloud.qcow2" "$cloud_tmp"
    log "cloud image ready to move: root=PARTUUID=$root_partuuid, ext4 UUID $root_fsuuid, ESP ${esp_mib} MiB"
}
if [ -n "$cloud_image" ]; then
    mkdir -p "$(dirname "$cloud_image")"
    t_cloud=$(elapsed)
    build_cloud_image
    t_cloud=$(awk -v a="$t_cloud" -v b="$(elapsed)" 'BEGIN{printf "%.1f", b-a}')
fi

{
    echo "# Mayfly golden bundle (built by deploy/images/debian/build.sh)"
    echo "format: 1"
    echo "name: $name"
    echo "arch: x86_64"
    echo "boot:"
    echo "  mode: kernel"
    echo "  kernel: vmlinuz"
    echo "  initrd: initrd.img"
    echo "  cmdline: \"$cmdline\""
    echo "disk:"
    echo "  file: disk.qcow2"
    echo "  format: qcow2"
    echo "defaults:"
    echo "  cpus: 2"
    echo "  memory: 1GiB"
    echo "guest:"
    echo "  user: root"
    echo "  ssh_port: 22"
    echo "  provision: cloud-init"
    echo "  workdir: /builds"
    echo "files:"
    for f in vmlinuz initrd.img disk.qcow2; do
        echo "  $f: $(cd "$stage" && sha256sum "$f" | cut -d' ' -f1)"
    done
} > "$stage/bundle.yaml"
chmod 0444 "$stage"/*
chmod 0755 "$stage"

# Move into place.
if [ -e "$out" ] || [ -L "$out" ]; then
    old=$(mktemp -d "$out_parent/.$name-old.XXXXXX")
    mv "$out" "$old/"
fi
mv "$stage" "$out"
if [ -n "$cloud_image" ]; then
    mv -f "$cloud_tmp" "$cloud_image"
    cloud_tmp=
fi
sizes=$(qemu-img info --output=json "$out/disk.qcow2" | tr -d ' \n' \
    | sed -n 's/.*"virtual-size":\([0-9]*\).*"actual-size":\([0-9]*\).*/\1 \2/p; s/.*"actual-size":\([0-9]*\).*"virtual-size":\([0-9]*\).*/\2 \1/p' | head -n1)
log "bundle ready: $out (disk.qcow2: virtual $(( ${sizes% *} / 1048576 )) MiB, allocated $(( ${sizes#* } / 1048576 )) MiB; bundle $(du -sh "$out" | cut -f1) on disk)"
if [ -n "$cloud_image" ]; then
    sizes=$(qemu-img info --output=json "$cloud_image" | tr -d ' \n' \
        | sed -n 's/.*"virtual-size":\([0-9]*\).*"actual-size":\([0-9]*\).*/\1 \2/p; s/.*"actual-size":\([0-9]*\).*"virtual-size":\([0-9]*\).*/\2 \1/p' | head -n1)
    log "cloud image ready: $cloud_image (qcow2: virtual $(( ${sizes% *} / 1048576 )) MiB, allocated $(( ${sizes#* } / 1048576 )) MiB; made in $t_cloud s)"
fi
