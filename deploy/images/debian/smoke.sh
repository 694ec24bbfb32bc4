#!/usr/bin/env bash
# Boot a Mayfly Debian bundle once under TCG, the way Mayfly does, and check it.
#
#   deploy/images/debian/smoke.sh [--timeout SECONDS] [--analyze] [--keep] [BUNDLE_DIR]
#   deploy/images/debian/smoke.sh [--timeout SECONDS] [--analyze] [--keep] --cloud-image FILE
#
# BUNDLE_DIR defaults to .images/debian-12 in the repo root. Makes a qcow2 overlay clone, a fresh
# login key and host key, a NoCloud seed (cloud-localds) and boots with the bundle's cmdline; then
# pins the host key, runs checks over SSH and prints timings from QEMU start. --analyze also prints
# systemd-analyze and cloud-init analyze output; --keep keeps the temp dir (console.log) on exit.
# --cloud-image boots FILE (build.sh --cloud-image) the way `mayfly bundle import --cloud-image`
# does: OVMF with a copy of OVMF_VARS_4M.fd, the disk's own boot loader, root user, 2 CPUs, 1 GiB.
# MAYFLY_SMOKE_QEMU_ARGS: extra QEMU arguments (word-split), e.g. "-smp 1".
set -euo pipefail

prog=smoke.sh
die() { printf '%s: FAIL: %s\n' "$prog" "$*" >&2; exit 1; }
say() { printf '%s: %s\n' "$prog" "$*" >&2; }
now() { local t=${EPOCHREALTIME/,/.}; printf '%s\n' "$t"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
qcpu() {  # CPU seconds (user+system) QEMU has used so far: less sensitive to host load than wall time
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.1f", ($12 + $13) / hz }' "/proc/$qpid/stat" 2>/dev/null || echo "?"
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(cd "$script_dir/../../.." && pwd -P)

timeout_s=300
analyze=0
keep=0
bundle=
cloud_image=
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout_s=${2:?}; shift 2 ;;
        --analyze) analyze=1; shift ;;
        --keep) keep=1; shift ;;
        --cloud-image) cloud_image=${2:?--cloud-image needs a file}; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) bundle=$1; shift ;;
    esac
done
if [ -n "$cloud_image" ]; then
    [ -z "$bundle" ] || die "give either BUNDLE_DIR or --cloud-image, not both"
    [ -f "$cloud_image" ] || die "no cloud image $cloud_image (build it with build.sh --cloud-image FILE)"
    cloud_image=$(cd "$(dirname "$cloud_image")" && pwd -P)/$(basename "$cloud_image")
else
    [ -n "$bundle" ] || bundle="$repo_root/.images/debian-12"
    [ -f "$bundle/bundle.yaml" ] || die "no bundle.yaml in $bundle (build it with deploy/images/debian/build.sh)"
    bundle=$(cd "$bundle" && pwd -P)
fi

missing=()
for pair in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils cloud-localds:cloud-image-utils \
            ssh-keygen:openssh-client ssh:openssh-client; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ -n "$cloud_image" ] && { [ ! -f "$ovmf_code" ] || [ ! -f "$ovmf_vars" ]; }; then missing+=(ovmf); fi
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing host packages: ${missing[*]}"
    say "installing ${missing[*]}"
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2 || die "apt-get install failed"
fi

# Minimal reader for the flat two-level bundle.yaml: yget section.key or yget key.
yget() {
    awk -v want="$1" '
        /^[ \t]*(#|$)/ { next }
        {
            indent = match($0, /[^ ]/) - 1
            k = $0; sub(/^ +/, "", k); v = k; sub(/:.*/, "", k); sub(/^[^:]*:[ ]*/, "", v)
            sub(/[ ]+#.*$/, "", v); gsub(/^"|"$/, "", v)
            if (indent == 0) { sec = k; key = k } else { key = sec "." k }
            if (key == want && v != "") { print v; exit }
        }
    ' "$bundle/bundle.yaml"
}
if [ -n "$cloud_image" ]; then
    # What `mayfly bundle import NAME --cloud-image FILE` makes: UEFI (the disk has an ESP), root,
    # 2 CPUs, 1 GiB, cloud-init; the workspace is the image's /builds.
    disk_path=$cloud_image
    disk_format=$(qemu-img info --output=json "$disk_path" | tr -d ' \n' | sed -n 's/.*"format":"\([a-z0-9]*\)".*/\1/p')
    [ -n "$disk_format" ] || die "qemu-img info cannot read $disk_path"
    cpus=2; mem_mib=1024; user=root; workdir=/builds
else
    [ "$(yget boot.mode)" = kernel ] || die "boot.mode is not kernel"
    kernel=$(yget boot.kernel); initrd=$(yget boot.initrd); cmdline=$(yget boot.cmdline)
    disk=$(yget disk.file); memory=$(yget defaults.memory); cpus=$(yget defaults.cpus); user=$(yget guest.user)
    workdir=$(yget guest.workdir)
    case "$memory" in *GiB) mem_mib=$(( ${memory%GiB} * 1024 )) ;; *MiB) mem_mib=${memory%MiB} ;; *) die "memory '$memory'" ;; esac
    disk_path=$bundle/$disk; disk_format=qcow2

    (cd "$bundle" && awk '/^files:/{f=1; next} /^[^ ]/{f=0} f && NF==2 {k=$1; sub(/:$/, "", k); print $2 "  " k}' bundle.yaml \
        | sha256sum --quiet -c -) || die "bundle checksums do not match bundle.yaml"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mayfly-debian-smoke.XXXXXX")
qpid=
cleanup() {
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
        kill -TERM "$qpid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$qpid" 2>/dev/null || true
        wait "$qpid" 2>/dev/null || true
    fi
    if [ "$keep" = 1 ]; then say "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Per-clone state: overlay, keys, NoCloud seed.
qemu-img create -q -f qcow2 -b "$disk_path" -F "$disk_format" "$tmp/overlay.qcow2"
[ -z "$cloud_image" ] || cp "$ovmf_vars" "$tmp/OVMF_VARS_4M.fd"
ssh-keygen -q -t ed25519 -N '' -C mayfly-smoke-login -f "$tmp/login"
ssh-keygen -q -t ed25519 -N '' -C mayfly-smoke-host -f "$tmp/host"
vmname="mayfly-smoke-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
instance_id="i-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
printf 'instance-id: %s\nlocal-hostname: %s\n' "$instance_id" "$vmname" > "$tmp/meta-data"
{
    echo "#cloud-config"
    echo "hostname: $vmname"
    echo "disable_root: false"
    echo "ssh_authorized_keys:"
    echo "  - $(cat "$tmp/login.pub")"
    echo "ssh_deletekeys: true"
    echo "ssh_genkeytypes: []"
    echo "ssh_keys:"
    echo "  ed25519_private: |"
    sed 's/^/    /' "$tmp/host"
    echo "  ed25519_public: $(cat "$tmp/host.pub")"
} > "$tmp/user-data"
cloud-localds "$tmp/seed.img" "$tmp/user-data" "$tmp/meta-data"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
start_qemu() {
    if [ -n "$cloud_image" ]; then start_qemu_uefi; return; fi
    qemu-system-x86_64 -name "$vmname" -accel tcg -cpu max -machine q35 -smp "${cpus:-2}" -m "$mem_mib" \
        -nodefaults -nographic -serial "file:$tmp/console.log" \
        -kernel "$bundle/$kernel" -initrd "$bundle/$initrd" -append "$cmdline" \
        -drive "file=$tmp/overlay.qcow2,if=virtio,format=qcow2" \
        -drive "file=$tmp/seed.img,if=virtio,format=raw,readonly=on" \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 \
        ${MAYFLY_SMOKE_QEMU_ARGS:-} > "$tmp/qemu.log" 2>&1 &
    qpid=$!
}
start_qemu_uefi() {  # as Mayfly boots a UEFI bundle (QEMUCommandLine): -no-reboot makes a reset fatal
    qemu-system-x86_64 -name "$vmname" -accel tcg -cpu max -machine q35 -smp "$cpus" -m "$mem_mib" \
        -nodefaults -display none -no-reboot \
        -drive "if=pflash,format=raw,unit=0,readonly=on,file=$ovmf_code" \
        -drive "if=pflash,format=raw,unit=1,file=$tmp/OVMF_VARS_4M.fd" \
        -drive "file=$tmp/overlay.qcow2,if=none,id=disk0,format=qcow2" -device virtio-blk-pci,drive=disk0 \
        -drive "file=$tmp/seed.img,if=none,id=seed0,format=raw,readonly=on" -device virtio-blk-pci,drive=seed0 \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 \
        -serial "file:$tmp/console.log" \
        ${MAYFLY_SMOKE_QEMU_ARGS:-} > "$tmp/qemu.log" 2>&1 &
    qpid=$!
}

started=0
for _ in 1 2 3 4 5; do
    port=$(( 20000 + RANDOM % 40000 ))
    port_free "$port" || continue
    t_start=$(now)
    start_qemu
    sleep 0.3
    if kill -0 "$qpid" 2>/dev/null; then started=1; break; fi
    wait "$qpid" 2>/dev/null || true; qpid=
    grep -q 'Could not set up host forwarding' "$tmp/qemu.log" || { cat "$tmp/qemu.log" >&2; die "QEMU did not start"; }
done
[ "$started" = 1 ] || die "no free port for hostfwd"
say "QEMU pid $qpid, ssh on 127.0.0.1:$port, clone $vmname"

printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1,2 "$tmp/host.pub")" > "$tmp/known_hosts"
ssh_opts=(-p "$port" -i "$tmp/login" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes
          -o UserKnownHostsFile="$tmp/known_hosts" -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=10
          -o LogLevel=ERROR)
gssh() { ssh "${ssh_opts[@]}" "$user@127.0.0.1" "$@"; }
alive() { kill -0 "$qpid" 2>/dev/null || { tail -n 30 "$tmp/console.log" >&2; die "QEMU exited"; }; }
deadline() { [ "$(since "$t_start" | cut -d. -f1)" -lt "$timeout_s" ] || { tail -n 30 "$tmp/console.log" >&2; die "timeout after $timeout_s s: $1"; }; }

# 1. SSH banner (slirp accepts TCP at once; the banner only comes from a listening sshd).
while :; do
    alive; deadline "no SSH banner"
    banner=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; head -c 8 <&3' _ "$port" 2>/dev/null || true)
    case "$banner" in SSH-2.0-*) break ;; esac
    sleep 0.2
done
t_banner=$(since "$t_start"); c_banner=$(qcpu)
say "SSH banner after $t_banner s (QEMU CPU $c_banner s)"

# 2. first successful command (host key pinned, fresh login key).
tries=0
while :; do
    alive; deadline "no successful ssh command"
    if out=$(gssh 'echo mayfly-ok; cut -d" " -f1 /proc/uptime' 2>"$tmp/ssh.err"); then
        [ "${out%%$'\n'*}" = mayfly-ok ] && break
    fi
    tries=$((tries + 1))
    grep -q 'Host key verification failed\|REMOTE HOST IDENTIFICATION HAS CHANGED' "$tmp/ssh.err" \
        && { say "host key not (yet) the seeded one: $(head -n1 "$tmp/ssh.err")"; }
    sleep 0.5
done
t_ssh=$(since "$t_start"); c_ssh=$(qcpu)
guest_up=${out#*$'\n'}
say "first ssh command after $t_ssh s ($tries failed attempts before); guest uptime then $guest_up s," \
    "so ≈$(awk -v a="$t_ssh" -v b="$guest_up" 'BEGIN{printf "%.1f", a-b}') s went by before the kernel's clock started"

# 3. cloud-init done.
ci=$(gssh 'cloud-init status --wait --long' 2>&1) || { printf '%s\n' "$ci" >&2; die "cloud-init status --wait failed"; }
t_ci=$(since "$t_start"); c_ci=$(qcpu)
printf '%s\n' "$ci" | grep -q '^status: done' || { printf '%s\n' "$ci" >&2; die "cloud-init did not finish with status done"; }
say "cloud-init done after $t_ci s (QEMU CPU $c_ci s)"

# 4. checks.
out=$(gssh 'git --version; systemctl is-active ssh; systemctl is-system-running --wait || true;
            cat /etc/hostname; hostname; findmnt -n -r -o SOURCE,FSTYPE,OPTIONS /; stat -c "%U %a" '"$workdir"';
            ls /etc/ssh/ssh_host_*; cat /etc/machine-id; uname -r;
            sudo -n true && echo sudo-ok; systemctl --failed --no-legend --plain' 2>&1) || { printf '%s\n' "$out" >&2; die "check command failed"; }
t_sys=$(since "$t_start")
printf '%s\n' "$out" | sed 's/^/  | /' >&2
mapfile -t L <<<"$out"
case "${L[0]}" in "git version "*) ;; *) die "git --version: ${L[0]}" ;; esac
[ "${L[1]}" = active ] || die "ssh is not active: ${L[1]}"
[ "${L[2]}" = running ] || say "WARNING: systemctl is-system-running says '${L[2]}'"
[ "${L[3]}" = "$vmname" ] && [ "${L[4]}" = "$vmname" ] || die "hostname is not $vmname"
if [ -n "$cloud_image" ]; then
    case "${L[5]}" in /dev/vd[a-z][0-9]*" ext4 rw"*) ;; *) die "root is not an ext4 partition mounted rw: ${L[5]}" ;; esac
else
    case "${L[5]}" in "/dev/vda ext4 rw"*) ;; *) die "root is not /dev/vda ext4 rw: ${L[5]}" ;; esac
fi
[ "${L[6]}" = "root 755" ] || die "$workdir is not root 0755: ${L[6]}"
[ "${L[7]}" = /etc/ssh/ssh_host_ed25519_key ] && [ "${L[8]}" = /etc/ssh/ssh_host_ed25519_key.pub ] \
    || die "unexpected host keys: ${L[7]} ${L[8]}"
[ ${#L[9]} = 32 ] || die "machine-id not set: ${L[9]}"
printf '%s\n' "$out" | grep -qx sudo-ok || die "sudo does not work"
if [ -n "$cloud_image" ]; then
    # Booted through UEFI; root= names the partition that is mounted on /, and fstab agrees; the
    # root partition is on the first virtio disk, the seed on the second.
    uefi=$(gssh 'set -e; src=$(findmnt -n -r -o SOURCE /); dev=${src#/dev/}; disk=${dev%%[0-9]*}
        [ -d /sys/firmware/efi ] && echo efi
        tr " " "\n" < /proc/cmdline | sed -n "s/^root=//p"
        echo "PARTUUID=$(blkid -s PARTUUID -o value "$src")"
        awk "\$2 == \"/\" { print \$1 }" /etc/fstab
        cat "/sys/class/block/$dev/partition"; echo "$disk"
        readlink -f /dev/disk/by-label/cidata
        f=/sys/firmware/efi/efivars/LoaderInfo-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
        [ ! -f $f ] || echo "boot loader: $(cat $f | tail -c +5 | tr -d "\000")"
        echo "vfat/autofs mounts: $(findmnt -rn -t vfat,autofs -o TARGET | tr "\n" " ")"' 2>&1) \
        || { printf '%s\n' "$uefi" >&2; die "UEFI/root check command failed"; }
    printf '%s\n' "$uefi" | sed 's/^/  | /' >&2
    mapfile -t U <<<"$uefi"
    [ "${U[0]}" = efi ] || die "not booted through UEFI (no /sys/firmware/efi)"
    case "${U[1]}" in PARTUUID=*|UUID=*) ;; *) die "root= on the kernel command line is '${U[1]}', not PARTUUID=/UUID=" ;; esac
    [ "${U[1],,}" = "${U[2],,}" ] || die "root= (${U[1]}) is not the mounted root partition (${U[2]})"
    [ "${U[3],,}" = "${U[2],,}" ] || die "fstab names '${U[3]}' for /, not the root partition ${U[2]}"
    [ "${U[5]}" = vda ] || die "the root partition is on ${U[5]}, not on the first virtio disk"
    [ "${U[6]}" = /dev/vdb ] || die "the NoCloud seed is ${U[6]}, not /dev/vdb"
fi
guest_key=$(gssh 'cut -d" " -f1,2 /etc/ssh/ssh_host_ed25519_key.pub')
[ "$guest_key" = "$(cut -d' ' -f1,2 "$tmp/host.pub")" ] || die "guest host key is not the seeded one"

# 5. outside world through slirp (only if the host resolves deb.debian.org itself).
if getent hosts deb.debian.org >/dev/null 2>&1; then
    net=$(gssh 'getent hosts deb.debian.org >/dev/null && echo dns-ok;
        exec 3<>/dev/tcp/deb.debian.org/80 && printf "HEAD /debian/dists/bookworm/Release HTTP/1.1\r\nHost: deb.debian.org\r\nConnection: close\r\n\r\n" >&3 &&
        head -n1 <&3' 2>&1) || true
    printf '%s\n' "$net" | sed 's/^/  | /' >&2
    printf '%s\n' "$net" | grep -q '^dns-ok' && printf '%s\n' "$net" | grep -q '^HTTP/1\.[01] 200' \
        || die "guest cannot reach deb.debian.org through QEMU user networking"
    say "outside world: ok (DNS + HTTP to deb.debian.org)"
else
    say "outside world: skipped (the host itself cannot resolve deb.debian.org)"
fi

if [ "$analyze" = 1 ]; then
    gssh 'echo "## cloud-init schema --system"; cloud-init schema --system 2>&1 | tail -n 8
          for v in LoaderTimeInitUSec LoaderTimeExecUSec LoaderDevicePartUUID; do
              f=/sys/firmware/efi/efivars/$v-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
              [ ! -f $f ] || echo "## efivar $v: $(cat $f | tail -c +5 | tr -d "\000")"
          done
          echo "## kernel"; dmesg | grep -E "Run /init|EXT4-fs \(vd|systemd\[1\]: systemd [0-9]|clocksource: Switched|efi: EFI v" | head -n 8
          echo "## systemd-analyze"; systemd-analyze; systemd-analyze blame | head -n 40
          systemd-analyze critical-chain ssh.service | tail -n +3
          echo "## cloud-init analyze"; cloud-init analyze show 2>/dev/null | grep -E "^(Finished stage|Total Time)"
          cloud-init analyze blame 2>/dev/null | head -n 12
          echo "## keys"; ls /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys
          echo "## journal"; journalctl -b -o short-monotonic --no-pager | grep -E "sshd\[|Started ssh|running .init|finished at" | head -n 20' 2>&1 \
        | sed 's/^/  | /' >&2 || true
fi

say "PASS: banner $t_banner s, first command $t_ssh s, cloud-init done $t_ci s, checks done $t_sys s (QEMU start = 0)"
say "QEMU CPU time: banner $c_banner s, first command $c_ssh s, cloud-init done $c_ci s; host load $(cut -d' ' -f1-3 /proc/loadavg)"
