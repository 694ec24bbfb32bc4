#!/usr/bin/env bash
# Build Mayfly's tiny test-guest bundle from Debian packages only.
#
#   deploy/images/tiny/build.sh [--out DIR] [--cache DIR] [--boot kernel|uefi]
#
# Output (default .images/tiny, or .images/tiny-uefi for --boot uefi, relative to the repo root):
#   vmlinux | vmlinuz, initramfs.cpio, disk.qcow2, [nvram.fd], ssh/id_ed25519{,.pub},
#   ssh/host_ed25519_key.pub, bundle.yaml
# See README.md next to this script for the guest contract.
set -euo pipefail
umask 022

prog=build.sh
log() { printf '%s [%6.1fs] %s\n' "$prog" "$(elapsed)" "$*" >&2; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
t0=${EPOCHREALTIME/,/.}
elapsed() { local now=${EPOCHREALTIME/,/.}; awk -v a="$t0" -v b="$now" 'BEGIN{printf "%.1f", b-a}'; }

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(cd "$script_dir/../../.." && pwd -P)

boot=kernel
out=
cache=
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --out=*) out=${1#*=}; shift ;;
        --cache) cache=${2:?--cache needs a directory}; shift 2 ;;
        --cache=*) cache=${1#*=}; shift ;;
        --boot) boot=${2:?--boot needs kernel or uefi}; shift 2 ;;
        --boot=*) boot=${1#*=}; shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case "$boot" in
    kernel) name=tiny; kernel_file=vmlinux ;;
    uefi) name=tiny-uefi; kernel_file=vmlinuz ;;
    *) die "--boot must be kernel or uefi, not '$boot'" ;;
esac
[ -n "$out" ] || out="$repo_root/.images/$name"
[ -n "$cache" ] || cache="$repo_root/.images/cache"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
case "$cache" in /*) ;; *) cache="$PWD/$cache" ;; esac
out=${out%/}

ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
cmdline="console=ttyS0 quiet"
# Top-level modules; their dependencies are resolved with modprobe --show-depends.
# crc32c_generic is ext4's soft dependency (crc32c) and works on every (TCG) CPU model.
top_modules="virtio_pci virtio_net virtio_blk crc32c_generic ext4 button evdev qemu_fw_cfg"
lib_packages="libtomcrypt1 libtommath1 libgmp10 zlib1g libcrypt1 libc6"
epoch=${SOURCE_DATE_EPOCH:-1700000000}

# ---------------------------------------------------------------- host tools
apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
}

ensure_tools() {
    local missing=() pair cmd pkg
    for pair in busybox-static:@busybox-static cpio:cpio mke2fs:e2fsprogs qemu-img:qemu-utils \
                ssh-keygen:openssh-client dropbearconvert:dropbear-bin depmod:kmod modprobe:kmod \
                xz:xz-utils dpkg-deb:dpkg apt-get:apt sha256sum:coreutils; do
        cmd=${pair%%:*}; pkg=${pair#*:}
        if [ "${pkg#@}" != "$pkg" ]; then
            pkg=${pkg#@}
            dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
        elif ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then
            missing+=("$pkg")
        fi
    done
    if [ "$boot" = uefi ] && [ ! -f "$ovmf_vars" ]; then missing+=(ovmf); fi
    if [ ${#missing[@]} -gt 0 ]; then
        mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
        [ "$(id -u)" = 0 ] || die "missing host packages (${missing[*]}); install them as root"
        apt_update_once
        log "installing host packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
            || die "apt-get install ${missing[*]} failed"
    fi
    export PATH="$PATH:/usr/sbin:/sbin"
}

# ---------------------------------------------------------------- .deb cache
# fetch_debs PKG...: makes sure the candidate version of every PKG is in $cache/debs
# (checked against apt's SHA256) and sets DEB[PKG] to its path. One apt-cache call,
# one apt-get download call for whatever is missing.
declare -A DEB=()
fetch_debs() {
    local info pkg ver arch sha file missing=() want=()
    info=$(apt-cache show --no-all-versions "$@" 2>/dev/null || true)
    if [ "$(printf '%s\n' "$info" | grep -c '^Package: ')" -lt $# ]; then
        apt_update_once
        info=$(apt-cache show --no-all-versions "$@") || die "apt-cache cannot find all of: $*"
    fi
    while read -r pkg ver arch sha; do
        file="$cache/debs/${pkg}_${ver//:/%3a}_${arch}.deb"
        DEB[$pkg]=$file
        if [ -f "$file" ] && [ "$(sha256sum "$file" | cut -d' ' -f1)" = "$sha" ]; then continue; fi
        rm -f "$file"
        missing+=("$pkg=$ver"); want+=("$file:$sha")
    done < <(printf '%s\n' "$info" | awk '
        /^Package: /{p=$2} /^Version: /{v=$2} /^Architecture: /{a=$2} /^SHA256: /{h=$2}
        /^$/{ if (p != "") print p, v, a, h; p=""; v=""; a=""; h="" }
        END{ if (p != "") print p, v, a, h }')
    for pkg in "$@"; do [ -n "${DEB[$pkg]:-}" ] || die "apt-cache has no candidate for $pkg"; done
    [ ${#missing[@]} -gt 0 ] || return 0
    log "downloading ${missing[*]}"
    # Download into a private directory that the _apt sandbox user may write to.
    local dl w got
    dl=$(mktemp -d "$cache/debs/.dl.XXXXXX")
    chmod 0777 "$dl"
    if ! (cd "$dl" && apt-get download -qq -o APT::Sandbox::User=root "${missing[@]}" >&2); then
        rm -rf "$dl"; die "apt-get download ${missing[*]} failed"
    fi
    for w in "${want[@]}"; do
        file=${w%:*}; sha=${w##*:}
        got="$dl/$(basename "$file")"
        [ -f "$got" ] || { rm -rf "$dl"; die "apt-get download did not produce $(basename "$file")"; }
        [ "$(sha256sum "$got" | cut -d' ' -f1)" = "$sha" ] || { rm -rf "$dl"; die "checksum mismatch: $(basename "$file")"; }
        mv "$got" "$file"
    done
    rm -rf "$dl"
}

# ---------------------------------------------------------------- kernel kit
# Extracts the PVH ELF vmlinux from an x86 bzImage: the compressed payload sits at
# (setup_sects+1)*512 + payload_offset (boot protocol >= 2.08), followed by a 4-byte size.
extract_vmlinux() {
    local bz=$1 dst=$2 setup_sects payload_off payload_len start magic
    [ "$(od -An -c -j $((0x202)) -N4 "$bz" | tr -d ' ')" = HdrS ] || die "$bz is not a bzImage"
    setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
    [ "$setup_sects" -ne 0 ] || setup_sects=4
    payload_off=$(od -An -tu4 -j $((0x248)) -N4 "$bz" | tr -d ' ')
    payload_len=$(od -An -tu4 -j $((0x24c)) -N4 "$bz" | tr -d ' ')
    start=$(( (setup_sects + 1) * 512 + payload_off ))
    magic=$(od -An -tx1 -j "$start" -N6 "$bz" | tr -d ' \n')
    case "$magic" in
        fd377a585a00) tail -c +$((start + 1)) "$bz" | head -c "$payload_len" | xz -dc --single-stream > "$dst" ;;
        1f8b*) tail -c +$((start + 1)) "$bz" | head -c "$payload_len" | gzip -dc > "$dst" 2>/dev/null || [ -s "$dst" ] ;;
        *) die "unsupported bzImage payload compression (magic $magic)" ;;
    esac
    [ "$(od -An -tx1 -N4 "$dst" | tr -d ' \n')" = 7f454c46 ] || die "extracted vmlinux is not an ELF file"
    if command -v readelf >/dev/null 2>&1; then
        # PVH entry point: Xen ELF note type 0x12 (XEN_ELFNOTE_PHYS32_ENTRY).
        readelf -n "$dst" 2>/dev/null | grep -A0 -E '^ *Xen' | grep -qiE '0x00000012|PHYS32' \
            || die "vmlinux has no PVH entry note (Xen note 0x12)"
    fi
}

# Builds (once per kernel package and module list) $cache/kernel/<deb>/ with
# vmlinuz, vmlinux, modules/*.ko and modules/load (module names in load order).
kernel_package() {
    local meta kpkg
    meta=$(apt-cache depends linux-image-amd64 2>/dev/null || true)
    if ! printf '%s\n' "$meta" | grep -q 'Depends: linux-image-'; then
        apt_update_once
        meta=$(apt-cache depends linux-image-amd64)
    fi
    kpkg=$(printf '%s\n' "$meta" | sed -n 's/^ *|\{0,1\}Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)
    [ -n "$kpkg" ] || die "cannot find the kernel package that linux-image-amd64 depends on"
    printf '%s\n' "$kpkg"
}

prepare_kernel() {
    local kpkg=$1 deb=$2 key kdir work kver moddir m line f base
    kver=${kpkg#linux-image-}
    key=$(basename "$deb" .deb)
    kdir="$cache/kernel/$key"
    if [ -f "$kdir/.complete" ] && [ "$(cat "$kdir/.complete")" = "$top_modules" ]; then
        log "kernel $kpkg: cached"
        printf '%s\n' "$kdir"; return 0
    fi
    log "unpacking $(basename "$deb")"
    rm -rf "$kdir" "$kdir.tmp"
    mkdir -p "$kdir.tmp/modules"
    work="$kdir.tmp/x"
    dpkg -x "$deb" "$work"
    cp "$work/boot/vmlinuz-$kver" "$kdir.tmp/vmlinuz"
    log "extracting vmlinux (PVH ELF) from vmlinuz-$kver"
    extract_vmlinux "$kdir.tmp/vmlinuz" "$kdir.tmp/vmlinux"
    # depmod/modprobe expect <base>/lib/modules/<version>.
    if [ ! -d "$work/lib/modules/$kver" ] && [ -d "$work/usr/lib/modules/$kver" ]; then
        mkdir -p "$work/lib"; ln -s ../usr/lib/modules "$work/lib/modules"
    fi
    moddir="$work/lib/modules/$kver"
    [ -d "$moddir" ] || die "no modules directory for $kver in $kpkg"
    depmod -b "$work" "$kver"
    : > "$kdir.tmp/modules/load"
    for m in $top_modules; do
        modprobe -d "$work" -S "$kver" --show-depends "$m" > "$kdir.tmp/deps" \
            || die "modprobe --show-depends $m failed"
        while read -r line; do
            case "$line" in
                insmod\ *) f=${line#insmod }; f=${f%% *} ;;
                builtin\ *) continue ;;
                *) continue ;;
            esac
            base=$(basename "$f"); base=${base%.ko*}
            case "$base" in crc32c_intel|crc32c-intel) continue ;; esac
            grep -qxF "$base" "$kdir.tmp/modules/load" && continue
            case "$f" in
                *.ko) cp "$f" "$kdir.tmp/modules/$base.ko" ;;
                *.ko.xz) xz -dc "$f" > "$kdir.tmp/modules/$base.ko" ;;
                *.ko.zst) zstd -qdc "$f" > "$kdir.tmp/modules/$base.ko" ;;
                *.ko.gz) gzip -dc "$f" > "$kdir.tmp/modules/$base.ko" ;;
                *) die "unexpected module file $f" ;;
            esac
            echo "$base" >> "$kdir.tmp/modules/load"
        done < "$kdir.tmp/deps"
    done
    rm -rf "$work" "$kdir.tmp/deps"
    printf '%s\n' "$kpkg" > "$kdir.tmp/package"
    printf '%s\n' "$top_modules" > "$kdir.tmp/.complete"
    mv "$kdir.tmp" "$kdir"
    log "kernel $kpkg: modules $(tr '\n' ' ' < "$kdir/modules/load")"
    printf '%s\n' "$kdir"
}

# ---------------------------------------------------------------- guest files
write_init() {
    cat > "$1" <<'EOF'
#!/bin/sh
# Mayfly tiny guest: /init (PID 1), busybox ash. Built by deploy/images/tiny/build.sh.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=linux SHELL=/bin/sh
cd /
say() { echo "mayfly-guest: $*"; }

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm

while read -r m; do
    [ -n "$m" ] && { insmod "/lib/modules/$m.ko" || say "warning: insmod $m failed"; }
done < /lib/modules/load

hostname mayfly
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 \
    || say "error: network setup on eth0 failed"
echo "nameserver 10.0.2.3" > /etc/resolv.conf
# Mayfly's isolated network adds a second NIC that only carries SSH in (QEMU's restricted user
# network): give it its fixed address, with no route through it.
if [ -e /sys/class/net/eth1 ]; then
    ip link set eth1 up && ip addr add 10.0.3.15/24 dev eth1 || say "error: network setup on eth1 failed"
fi

# Job workspace: the (qcow2 clone of the) golden ext4 disk, if attached.
if [ -e /sys/block/vda ]; then
    i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do usleep 10000; i=$((i + 1)); done
    if mount -t ext4 -o rw,noatime /dev/vda /builds; then
        say "disk /dev/vda mounted at /builds"
    else
        say "error: cannot mount /dev/vda at /builds"
    fi
fi

# Per-clone keys from QEMU fw_cfg (opt/mayfly/authorized_keys, opt/mayfly/host_key).
fw=/sys/firmware/qemu_fw_cfg/by_name/opt/mayfly
hostkey=/etc/dropbear/dropbear_ed25519_host_key
ak_src=baked hk_src=baked
if [ -r "$fw/authorized_keys/raw" ]; then
    { cat "$fw/authorized_keys/raw"; echo; } | grep -v '^[[:space:]]*$' > /root/.ssh/authorized_keys.new
    if [ -s /root/.ssh/authorized_keys.new ]; then
        chmod 600 /root/.ssh/authorized_keys.new
        mv /root/.ssh/authorized_keys.new /root/.ssh/authorized_keys
        ak_src=fw_cfg
    else
        rm -f /root/.ssh/authorized_keys.new
        say "error: fw_cfg opt/mayfly/authorized_keys is empty; keeping the baked-in key"
    fi
fi
if [ -r "$fw/host_key/raw" ]; then
    cat "$fw/host_key/raw" > /run/host_key.in
    chmod 600 /run/host_key.in
    # OpenSSH format (ssh-keygen) is converted; anything else must be dropbear's own format.
    # Converting also validates the key.
    informat=dropbear
    grep -q -- '-----BEGIN OPENSSH PRIVATE KEY-----' /run/host_key.in && informat=openssh
    rm -f /run/host_key
    if dropbearconvert $informat dropbear /run/host_key.in /run/host_key >/run/host_key.log 2>&1 \
        && [ -s /run/host_key ]; then
        chmod 600 /run/host_key
        hostkey=/run/host_key hk_src=fw_cfg
    else
        say "error: fw_cfg opt/mayfly/host_key is not a usable ed25519 key; keeping the baked-in key"
    fi
    rm -f /run/host_key.in
fi
say "ssh keys: authorized_keys=$ak_src host_key=$hk_src"

# ACPI power button (QMP system_powerdown) -> /etc/acpi/PWRF/00000080.
acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid

# SSH: key-only (-s), port 22.
dropbear -F -E -s -p 22 -r "$hostkey" -P /run/dropbear.pid >/run/dropbear.log 2>&1 &
i=0
while [ $i -lt 500 ]; do
    if grep -q '^ *[0-9]*: [0-9A-F]*:0016 [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
        break
    fi
    if ! kill -0 $! 2>/dev/null; then
        say "error: dropbear exited:"; cat /run/dropbear.log; break
    fi
    usleep 10000; i=$((i + 1))
done
if [ $i -lt 500 ] && kill -0 $! 2>/dev/null; then
    say "ready"
else
    say "error: ssh server did not start"
fi

# PID 1 must never exit; waiting on a foreground sleep also reaps orphans.
trap '' HUP INT TERM USR1 USR2
while :; do sleep 3600; done
EOF
    chmod 0755 "$1"
}

write_power_handler() {
    cat > "$1" <<'EOF'
#!/bin/sh
# ACPI power button (QMP system_powerdown): flush, unmount /builds, power off.
echo "mayfly-guest: power button: powering off" > /dev/console
sync
if grep -q ' /builds ' /proc/mounts; then
    if ! umount /builds 2>/dev/null; then
        kill -TERM -1 2>/dev/null; usleep 100000; kill -KILL -1 2>/dev/null; usleep 50000
        umount /builds 2>/dev/null || mount -o remount,ro /builds 2>/dev/null
    fi
fi
sync
poweroff -f
EOF
    chmod 0755 "$1"
}

# ---------------------------------------------------------------- main
ensure_tools
mkdir -p "$cache/debs" "$cache/kernel"
exec 9>"$cache/.lock"
flock 9

out_parent=$(dirname "$out")
mkdir -p "$out_parent"
work=$(mktemp -d "$out_parent/.$name-work.XXXXXX")
stage=$(mktemp -d "$out_parent/.$name-stage.XXXXXX")
old=
cleanup() {
    rm -rf "$work" "$stage" ${old:+"$old"}
    rm -rf "$cache"/kernel/*.tmp "$cache"/debs/.dl.*   # partial cache entries (we hold the lock)
}
trap cleanup EXIT
trap 'exit 130' INT TERM

kpkg=$(kernel_package)
fetch_debs "$kpkg" dropbear-bin $lib_packages
kdir=$(prepare_kernel "$kpkg" "${DEB[$kpkg]}")

# dropbear + library closure
x="$work/debs"
mkdir -p "$x"
for p in dropbear-bin $lib_packages; do
    dpkg -x "${DEB[$p]}" "$x"
done
log "unpacked dropbear-bin and libraries"

root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib/modules,lib/x86_64-linux-gnu,lib64,etc/dropbear,etc/acpi/PWRF} \
         "$root"/{proc,sys,dev,run,tmp,builds,mnt,root/.ssh,var/log}
ln -s ../run "$root/var/run"
chmod 1777 "$root/tmp"
chmod 0700 "$root/root" "$root/root/.ssh"

# busybox (static) + applet links
bb=$(dpkg -L busybox-static | grep -E '^(/usr)?/s?bin/busybox$' | head -n1 || true)
[ -n "$bb" ] && [ -x "$bb" ] || die "busybox-static binary not found"
if ldd "$bb" >/dev/null 2>&1; then die "$bb is not static"; fi
cp "$bb" "$root/bin/busybox"
while read -r applet; do
    [ -n "$applet" ] || continue
    [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done < <("$root/bin/busybox" --list-full)
[ -L "$root/bin/sh" ] || die "busybox has no sh applet"

# dropbear, dropbearconvert and their shared-library closure (resolved with the packaged ld.so)
cp "$x/usr/sbin/dropbear" "$root/usr/sbin/dropbear"
cp "$x/usr/bin/dropbearconvert" "$root/usr/bin/dropbearconvert"
ldso=$(find "$x" -name 'ld-linux-x86-64.so.2' -type f | head -n1)
[ -n "$ldso" ] || die "ld-linux-x86-64.so.2 not found in libc6"
libpath="$x/lib/x86_64-linux-gnu:$x/usr/lib/x86_64-linux-gnu"
for b in "$root/usr/sbin/dropbear" "$root/usr/bin/dropbearconvert"; do
    "$ldso" --library-path "$libpath" --list "$b" > "$work/ldd.txt" || die "cannot resolve libraries of $b"
    if grep -q 'not found' "$work/ldd.txt"; then cat "$work/ldd.txt" >&2; die "missing libraries for $b"; fi
    while read -r soname arrow path _; do
        [ "$arrow" = "=>" ] || continue
        case "$soname" in /*) continue ;; esac   # the interpreter (ld.so), copied below
        case "$path" in "$x"/*) ;; *) die "library $soname of $b resolved outside the packages: $path" ;; esac
        cp -L "$path" "$root/lib/x86_64-linux-gnu/$soname"
    done < "$work/ldd.txt"
done
cp -L "$ldso" "$root/lib64/ld-linux-x86-64.so.2"

# kernel modules
cp "$kdir"/modules/*.ko "$kdir/modules/load" "$root/lib/modules/"

# users, shells, init, acpi
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:*:19000:0:99999:7:::\n' > "$root/etc/shadow"; chmod 0600 "$root/etc/shadow"
printf 'root:x:0:\ntty:x:5:\n' > "$root/etc/group"
printf '/bin/sh\n/bin/ash\n' > "$root/etc/shells"
printf 'mayfly\n' > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 mayfly\n' > "$root/etc/hosts"
: > "$root/etc/resolv.conf"
write_init "$root/init"
write_power_handler "$root/etc/acpi/PWRF/00000080"

# SSH material: client key (authorised by default) and host key (private half only in the initramfs)
mkdir -p "$stage/ssh"
ssh-keygen -q -t ed25519 -N '' -C "mayfly-$name-client" -f "$stage/ssh/id_ed25519"
ssh-keygen -q -t ed25519 -N '' -C "mayfly-$name-host" -f "$work/host_ed25519_key"
cp "$work/host_ed25519_key.pub" "$stage/ssh/host_ed25519_key.pub"
dropbearconvert openssh dropbear "$work/host_ed25519_key" "$root/etc/dropbear/dropbear_ed25519_host_key" >/dev/null 2>&1 \
    || die "dropbearconvert of the host key failed"
chmod 0600 "$root/etc/dropbear/dropbear_ed25519_host_key"
cp "$stage/ssh/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
chmod 0600 "$root/root/.ssh/authorized_keys"

# Sanity check of the library closure without booting (root only; chroot).
# Runs on a throw-away copy so that nothing the programs write ends up in the image.
if [ "$(id -u)" = 0 ]; then
    cp -a "$root" "$work/check"
    chroot "$work/check" /usr/sbin/dropbear -V >/dev/null 2>&1 || die "dropbear does not run inside the initramfs tree"
    chroot "$work/check" /bin/sh -c 'dropbearconvert 2>&1 | grep -q "Usage"' \
        || die "dropbearconvert does not run inside the initramfs tree"
    rm -rf "$work/check"
    # Initial console for the kernel's PID 1 (devtmpfs is mounted over /dev by /init).
    mknod -m 0600 "$root/dev/console" c 5 1
fi

# initramfs: uncompressed newc, root-owned, sorted, fixed mtimes
find "$root" -exec touch -h -d "@$epoch" {} +
[ "$(find "$root/dev" -mindepth 1 ! -name console | wc -l)" = 0 ] || die "unexpected files in the initramfs /dev"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --reproducible --quiet) \
    > "$stage/initramfs.cpio"
log "initramfs.cpio: $(stat -c %s "$stage/initramfs.cpio") bytes"

# kernel
cp "$kdir/$kernel_file" "$stage/$kernel_file"

# golden workspace disk: 256 MiB sparse ext4 with a README, as qcow2
mkdir -p "$work/disk"
cat > "$work/disk/README" <<EOF
Mayfly golden workspace disk ($name). Mounted at /builds in the guest.
EOF
touch -d "@$epoch" "$work/disk/README"
truncate -s 256M "$work/disk.raw"
mke2fs -q -F -t ext4 -L builds -m 0 -E root_owner=0:0 -d "$work/disk" "$work/disk.raw" >/dev/null
qemu-img convert -q -f raw -O qcow2 "$work/disk.raw" "$stage/disk.qcow2"
rm -f "$work/disk.raw"

files=("$kernel_file" initramfs.cpio disk.qcow2)
if [ "$boot" = uefi ]; then
    cp "$ovmf_vars" "$stage/nvram.fd"
    files+=(nvram.fd)
fi
files+=(ssh/id_ed25519 ssh/id_ed25519.pub ssh/host_ed25519_key.pub)

{
    echo "# Mayfly golden bundle (built by deploy/images/tiny/build.sh)"
    echo "format: 1"
    echo "name: $name"
    echo "arch: x86_64"
    echo "boot:"
    echo "  mode: $boot"
    echo "  kernel: $kernel_file"
    echo "  initrd: initramfs.cpio"
    echo "  cmdline: \"$cmdline\""
    if [ "$boot" = uefi ]; then
        echo "  # firmware omitted: /usr/share/OVMF/OVMF_CODE_4M.fd on the host"
    fi
    echo "disk:"
    echo "  file: disk.qcow2"
    echo "  format: qcow2"
    if [ "$boot" = uefi ]; then
        echo "nvram: nvram.fd"
    fi
    echo "defaults:"
    echo "  cpus: 1"
    echo "  memory: 256MiB"
    echo "guest:"
    echo "  user: root"
    echo "  ssh_port: 22"
    echo "  ssh_key: ssh/id_ed25519"
    echo "  host_key: ssh/host_ed25519_key.pub"
    echo "  provision: fw_cfg"
    echo "  workdir: /builds"
    echo "files:"
    for f in "${files[@]}"; do
        echo "  $f: $(cd "$stage" && sha256sum "$f" | cut -d' ' -f1)"
    done
} > "$stage/bundle.yaml"

chmod a-w "$stage/$kernel_file" "$stage/initramfs.cpio" "$stage/disk.qcow2" "$stage/bundle.yaml" \
    "$stage/ssh/id_ed25519.pub" "$stage/ssh/host_ed25519_key.pub"
[ "$boot" = uefi ] && chmod a-w "$stage/nvram.fd"
chmod 0400 "$stage/ssh/id_ed25519"
chmod 0755 "$stage" "$stage/ssh"

# Move into place.
if [ -e "$out" ] || [ -L "$out" ]; then
    old=$(mktemp -d "$out_parent/.$name-old.XXXXXX")
    mv "$out" "$old/"
fi
mv "$stage" "$out"
log "bundle ready: $out ($(du -sh --apparent-size "$out" | cut -f1) apparent, $(du -sh "$out" | cut -f1) on disk)"
