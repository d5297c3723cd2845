#!/usr/bin/env bash
# Boot the images that build.sh made, the way a user's cloud image would be booted, and time it:
#
#   guest/debian/smoke.sh OUTDIR [CASE...]
#
# CASEs (default: all of them):
#   bios-login   debian12-bios.qcow2, SeaBIOS, virtio disk, no NIC, no seed: the serial console
#                reaches its login prompt
#   uefi-login   debian12-uefi.qcow2, OVMF (a fresh copy of OVMF_VARS), otherwise the same
#   bios-virtio  NoCloud seed (cidata ISO on an IDE CD-ROM), virtio disk and virtio-net NIC:
#                `ssh user@127.0.0.1 hostname` prints the seed's local-hostname
#   uefi-virtio  the same with OVMF
#   bios-vmware  the same with the root disk on pvscsi and a vmxnet3 NIC (VMware's devices)
#
# Each guest runs on a throw-away qcow2 overlay (the images are never written), under TCG
# (-accel tcg -cpu max -m 1024 -smp 1), with QEMU user-mode networking restricted to the guest
# itself (restrict=on: nothing leaves QEMU) and one hostfwd port on 127.0.0.1. Every wait is
# bounded; each QEMU is ended by its PID; the temporary directory (OUTDIR/.smoke.*) is removed.
# Needs qemu-system-x86, qemu-utils, ovmf, xorriso, openssh-client.
set -euo pipefail

die() { echo "guest/debian/smoke.sh: error: $*" >&2; exit 1; }
[[ $# -ge 1 ]] || die "usage: guest/debian/smoke.sh OUTDIR [CASE...]"
OUT="$(cd "$1" && pwd)"; shift
CASES=("$@")
[[ ${#CASES[@]} -gt 0 ]] || CASES=(bios-login uefi-login bios-virtio uefi-virtio bios-vmware)
TIMEOUT="${RAVEL_SMOKE_TIMEOUT:-400}"   # seconds per boot
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
for tool in qemu-system-x86_64 qemu-img xorriso ssh ssh-keygen python3 timeout; do
  command -v "$tool" >/dev/null || die "'$tool' not found"
done

T="$(mktemp -d "$OUT/.smoke.XXXXXX")"
QPID=""
cleanup() {
  if [[ -n "$QPID" ]] && kill -0 "$QPID" 2>/dev/null; then
    kill "$QPID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---- the NoCloud seed: a user with our key, a hostname, DHCP on the NIC with our MAC ----------
MAC=52:54:00:12:34:56
ssh-keygen -q -t ed25519 -N '' -C ravel-smoke -f "$T/key"
mkdir "$T/seed"
cat > "$T/seed/meta-data" <<EOF
instance-id: iid-smoke-1
local-hostname: smoke-1
EOF
cat > "$T/seed/user-data" <<EOF
#cloud-config
users:
  - name: ravel
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    shell: /bin/bash
    lock_passwd: true
    ssh_authorized_keys:
      - $(cat "$T/key.pub")
EOF
cat > "$T/seed/network-config" <<EOF
version: 2
ethernets:
  nic0:
    match:
      macaddress: "$MAC"
    dhcp4: true
EOF
(cd "$T/seed" && xorriso -as mkisofs -quiet -o "$T/seed.iso" -V cidata -J -r \
   user-data meta-data network-config 2>/dev/null) || die "cannot make the seed ISO"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.1f}')" "$1" "$2"; }

run_case() {  # CASE -> prints one result line, returns non-zero on failure
  local c="$1" fw="${1%%-*}" kind="${1#*-}" img args=() port="" start t_login="" t_ssh="" out
  img="$OUT/debian12-$fw.qcow2"
  [[ -s "$img" ]] || { echo "$c: FAIL (no $img)"; return 1; }
  qemu-img create -q -f qcow2 -b "$img" -F qcow2 "$T/$c.qcow2"
  if [[ "$fw" == uefi ]]; then
    cp "$OVMF_VARS" "$T/$c.vars"
    args+=(-drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE" -drive "if=pflash,format=raw,file=$T/$c.vars")
  fi
  case "$kind" in
    login)  args+=(-drive "file=$T/$c.qcow2,if=virtio" -nic none) ;;
    virtio|vmware)
      port="$(free_port)"
      args+=(-drive "file=$T/seed.iso,media=cdrom,if=ide,readonly=on")
      if [[ "$kind" == virtio ]]; then
        args+=(-drive "file=$T/$c.qcow2,if=virtio")
        args+=(-nic "user,restrict=on,model=virtio-net-pci,mac=$MAC,hostfwd=tcp:127.0.0.1:$port-:22")
      else
        args+=(-device pvscsi,id=pvscsi0 -drive "file=$T/$c.qcow2,if=none,id=root0"
               -device scsi-hd,drive=root0,bus=pvscsi0.0,bootindex=0)
        args+=(-nic "user,restrict=on,model=vmxnet3,mac=$MAC,hostfwd=tcp:127.0.0.1:$port-:22")
      fi ;;
    *) echo "$c: FAIL (unknown case)"; return 1 ;;
  esac
  start="$(now)"
  qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 1 -display none -monitor none \
    -serial "file:$T/$c.serial" "${args[@]}" > "$T/$c.qemu.log" 2>&1 &
  QPID=$!
  local deadline=$((SECONDS + TIMEOUT)) ok=0
  while (( SECONDS < deadline )); do
    kill -0 "$QPID" 2>/dev/null || break
    if [[ -z "$t_login" ]] && grep -aq 'login:' "$T/$c.serial" 2>/dev/null; then t_login="$(secs "$start" "$(now)")"; fi
    if [[ -z "$port" ]]; then
      [[ -n "$t_login" ]] && { ok=1; break; }
      sleep 0.2
    else
      if out="$(timeout 15 ssh -q -i "$T/key" -p "$port" -o BatchMode=yes -o ConnectTimeout=3 \
                 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null ravel@127.0.0.1 hostname 2>/dev/null)" \
         && [[ "$out" == smoke-1 ]]; then
        t_ssh="$(secs "$start" "$(now)")"; ok=1; break
      fi
      sleep 1
    fi
  done
  kill "$QPID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
  QPID=""
  if [[ $ok == 1 && -z "$port" ]]; then
    echo "$c: ok, login prompt after ${t_login} s"
  elif [[ $ok == 1 ]]; then
    echo "$c: ok, ssh hostname '$out' after ${t_ssh} s (login prompt: ${t_login:+after $t_login s}${t_login:-not yet})"
  else
    echo "$c: FAIL after $((TIMEOUT)) s; last serial lines:"; tail -n 15 "$T/$c.serial" 2>/dev/null | sed 's/^/    /'
    return 1
  fi
}

rc=0
for c in "${CASES[@]}"; do run_case "$c" || rc=1; done
exit $rc
