#!/usr/bin/env bash
# Boot a Mayfly tiny bundle once under TCG, the way Mayfly does, and check SSH, /builds and power-off.
#
#   deploy/images/tiny/smoke.sh [--fw-cfg] [--timeout SECONDS] [BUNDLE_DIR]
#
# BUNDLE_DIR defaults to .images/tiny in the repo root. With --fw-cfg, fresh per-clone keys are
# generated and injected through QEMU fw_cfg (opt/mayfly/authorized_keys, opt/mayfly/host_key);
# the injected host key is pinned and the bundle's baked-in client key must then be refused.
# Prints "boot-to-ssh: N.NN s" (QEMU start to the end of the first successful ssh command).
set -euo pipefail

prog=smoke.sh
die() { printf '%s: FAIL: %s\n' "$prog" "$*" >&2; exit 1; }
say() { printf '%s: %s\n' "$prog" "$*" >&2; }
now() { local t=${EPOCHREALTIME/,/.}; printf '%s\n' "$t"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(cd "$script_dir/../../.." && pwd -P)

fwcfg=0
timeout_s=120
bundle=
while [ $# -gt 0 ]; do
    case "$1" in
        --fw-cfg) fwcfg=1; shift ;;
        --timeout) timeout_s=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) bundle=$1; shift ;;
    esac
done
[ -n "$bundle" ] || bundle="$repo_root/.images/tiny"
[ -f "$bundle/bundle.yaml" ] || die "no bundle.yaml in $bundle (build it with deploy/images/tiny/build.sh)"
bundle=$(cd "$bundle" && pwd -P)
command -v python3 >/dev/null || die "python3 is needed for the QMP client"

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
mode=$(yget boot.mode); kernel=$(yget boot.kernel); initrd=$(yget boot.initrd); cmdline=$(yget boot.cmdline)
disk=$(yget disk.file); nvram=$(yget nvram); memory=$(yget defaults.memory); cpus=$(yget defaults.cpus)
ssh_key=$(yget guest.ssh_key); host_pub=$(yget guest.host_key); user=$(yget guest.user)
firmware=$(yget boot.firmware); [ -n "$firmware" ] || firmware=/usr/share/OVMF/OVMF_CODE_4M.fd
mem_mib=${memory%MiB}
case "$mode" in kernel|uefi) ;; *) die "unsupported boot.mode '$mode'" ;; esac

# Verify the bundle's checksums.
(cd "$bundle" && awk '/^files:/{f=1; next} /^[^ ]/{f=0} f && NF==2 {k=$1; sub(/:$/, "", k); print $2 "  " k}' bundle.yaml \
    | sha256sum --quiet -c -) || die "bundle checksums do not match bundle.yaml"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mayfly-smoke.XXXXXX")
qpid=
cleanup() {
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
        kill -TERM "$qpid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$qpid" 2>/dev/null || true
        wait "$qpid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

qmp() {  # qmp COMMAND...: run QMP commands in order, print each reply
    python3 - "$tmp/qmp.sock" "$@" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
f = s.makefile("rw")
def reply():
    while True:
        line = f.readline()
        if not line: raise SystemExit("QMP connection closed")
        msg = json.loads(line)
        if "return" in msg or "error" in msg: return msg
json.loads(f.readline())  # greeting
for cmd in ["qmp_capabilities"] + sys.argv[2:]:
    f.write(json.dumps({"execute": cmd}) + "\n"); f.flush()
    r = reply()
    if "error" in r: raise SystemExit("QMP %s: %s" % (cmd, r["error"]))
    if cmd != "qmp_capabilities": print(cmd, json.dumps(r["return"]))
EOF
}

# Per-clone state: qcow2 overlay on the golden disk (absolute backing path), nvram copy.
qemu-img create -q -f qcow2 -b "$bundle/$disk" -F qcow2 "$tmp/disk.qcow2"
if [ "$mode" = uefi ]; then
    [ -n "$nvram" ] || die "uefi bundle without nvram"
    cp "$bundle/$nvram" "$tmp/nvram.fd"; chmod u+w "$tmp/nvram.fd"
fi

# Keys: baked-in, or fresh ones injected through fw_cfg.
key="$bundle/$ssh_key"
pin_pub="$bundle/$host_pub"
fw_args=()
if [ "$fwcfg" = 1 ]; then
    ssh-keygen -q -t ed25519 -N '' -C smoke-client -f "$tmp/client"
    ssh-keygen -q -t ed25519 -N '' -C smoke-host -f "$tmp/host"
    key="$tmp/client"; pin_pub="$tmp/host.pub"
    fw_args=(-fw_cfg "name=opt/mayfly/authorized_keys,file=$tmp/client.pub"
             -fw_cfg "name=opt/mayfly/host_key,file=$tmp/host")
fi

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
start_qemu() {
    local args=(qemu-system-x86_64 -name mayfly-smoke -nodefaults -no-user-config -display none
        -accel tcg -cpu max -smp "${cpus:-1}" -m "${mem_mib:-256}" -no-reboot)
    if [ "$mode" = uefi ]; then
        args+=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$firmware"
               -drive "if=pflash,format=raw,unit=1,file=$tmp/nvram.fd")
    fi
    # shellcheck disable=SC2054  # commas belong to QEMU option values
    args+=(-kernel "$bundle/$kernel" -initrd "$bundle/$initrd" -append "$cmdline"
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0
        -drive "file=$tmp/disk.qcow2,if=none,id=d0,format=qcow2" -device virtio-blk-pci,drive=d0
        -serial "file:$tmp/console.log" -qmp "unix:$tmp/qmp.sock,server=on,wait=off"
        "${fw_args[@]}")
    t_start=$(now)
    "${args[@]}" </dev/null >"$tmp/qemu.out" 2>&1 &
    qpid=$!
}
show_logs() {
    say "--- qemu output"; cat "$tmp/qemu.out" >&2 || true
    say "--- console (last 30 lines)"; tail -n 30 "$tmp/console.log" >&2 2>/dev/null || true
}
probe_banner() {
    timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; IFS= read -r -t 0.3 l <&3 || exit 1; [[ $l == SSH-* ]]' \
        _ "$port" 2>/dev/null
}

# Start QEMU on a free port (retry if the port got taken in between), wait for the SSH banner.
tries=0
while :; do
    tries=$((tries + 1))
    port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    port_free "$port" || continue
    start_qemu
    up=0
    while :; do
        if ! kill -0 "$qpid" 2>/dev/null; then
            wait "$qpid" || true; qpid=
            if grep -q 'host forwarding' "$tmp/qemu.out" && [ $tries -lt 5 ]; then continue 2; fi
            show_logs; die "QEMU exited before SSH came up"
        fi
        if probe_banner; then up=1; break; fi
        [ "$(awk -v a="$(since "$t_start")" -v b="$timeout_s" 'BEGIN{print (a > b)}')" = 0 ] || break
        sleep 0.05
    done
    [ $up = 1 ] || { show_logs; die "no SSH banner within ${timeout_s}s"; }
    break
done
t_banner=$(since "$t_start")

printf '[127.0.0.1]:%s %s\n' "$port" "$(awk '{print $1, $2}' "$pin_pub")" > "$tmp/known_hosts"
ssh_opts=(-p "$port" -o BatchMode=yes -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$tmp/known_hosts"
          -o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o ConnectTimeout=10 -o LogLevel=ERROR)
out=
for _ in 1 2 3; do
    if out=$(ssh -i "$key" "${ssh_opts[@]}" "${user:-root}@127.0.0.1" 'uname -a; cat /builds/README; echo $0' 2>"$tmp/ssh.err"); then
        break
    fi
    out=; sleep 0.5
done
[ -n "$out" ] || { cat "$tmp/ssh.err" >&2; show_logs; die "ssh failed"; }
t_ssh=$(since "$t_start")
printf '%s\n' "$out" | sed 's/^/  guest| /' >&2
printf '%s\n' "$out" | sed -n 1p | grep -q '^Linux mayfly ' || die "unexpected uname output"
printf '%s\n' "$out" | grep -q '^Mayfly golden workspace disk' || die "/builds/README missing"
[ "$(printf '%s\n' "$out" | tail -n1)" = sh ] || die "login shell \$0 is not sh"
grep -q '^mayfly-guest: ready' "$tmp/console.log" || die "no 'mayfly-guest: ready' line on the console"

if [ "$fwcfg" = 1 ]; then
    grep -q 'mayfly-guest: ssh keys: authorized_keys=fw_cfg host_key=fw_cfg' "$tmp/console.log" \
        || { show_logs; die "guest did not report fw_cfg keys"; }
    if ssh -i "$bundle/$ssh_key" "${ssh_opts[@]}" "${user:-root}@127.0.0.1" true 2>/dev/null; then
        die "baked-in client key still accepted although authorized_keys was injected"
    fi
    say "fw_cfg: injected host key pinned OK, baked-in client key refused"
fi

# Power off through ACPI (QMP system_powerdown); QEMU must exit by itself.
t_off=$(now)
qmp system_powerdown >/dev/null || die "QMP system_powerdown failed"
for _ in $(seq 150); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$qpid" 2>/dev/null; then
    say "guest ignored system_powerdown; sending QMP quit"
    qmp quit >/dev/null 2>&1 || true
    for _ in $(seq 50); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
    show_logs
    die "ACPI power-off did not work"
fi
rc=0; wait "$qpid" || rc=$?; qpid=
[ $rc = 0 ] || { show_logs; die "QEMU exited with status $rc"; }
t_poweroff=$(since "$t_off")
grep -q 'mayfly-guest: power button' "$tmp/console.log" || die "power button handler did not run"
qemu-img check -q "$tmp/disk.qcow2" || die "clone qcow2 is inconsistent after power-off"

say "OK mode=$mode keys=$([ $fwcfg = 1 ] && echo fw_cfg || echo baked) port=$port banner=${t_banner}s poweroff=${t_poweroff}s"
echo "boot-to-ssh: $t_ssh s"
