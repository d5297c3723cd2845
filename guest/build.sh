#!/usr/bin/env bash
# Build the ravel demo guest image from Debian packages.
#
#   guest/build.sh OUTDIR
#
# Writes OUTDIR/vmlinuz, OUTDIR/initrd.img (gzip'd newc cpio) and OUTDIR/VERSION.
# Idempotent: a stamp file (OUTDIR/.stamp) records a hash of every input; when it
# matches, the script exits at once. Concurrent runs on the same OUTDIR serialise
# on OUTDIR/.lock.
#
# Everything comes from apt: the Debian cloud kernel .deb (apt-get download),
# busybox-static and gcc (with libc6-dev) from the installed system.
#
# Environment:
#   RAVEL_GUEST_KERNEL   kernel ABI to use, e.g. 6.1.0-56-cloud-amd64
#                        (default: what linux-image-cloud-amd64 depends on)
#   RAVEL_GUEST_VERBOSE  set to 1 for a trace of every command
set -euo pipefail
[[ "${RAVEL_GUEST_VERBOSE:-0}" == 1 ]] && set -x

die() { echo "guest/build.sh: error: $*" >&2; exit 1; }
log() { echo "guest/build.sh: $*" >&2; }

[[ $# -eq 1 ]] || die "usage: guest/build.sh OUTDIR"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"

# The modules the guest loads at boot (their dependencies are added automatically).
# Not in the Debian cloud kernel at all: e1000/e1000e (NIC), ahci (SATA), LSI/megasas
# SCSI. ext4 (which also mounts ext2) and af_packet are built in; nvme is built in.
MODULES=(
  virtio_pci virtio_net virtio_blk virtio_scsi
  vmxnet3 vmw_pvscsi sd_mod ata_piix
  8021q
  kvm kvm_amd kvm_intel
)

for tool in apt-cache apt-get dpkg-deb gcc gzip sha256sum flock; do
  command -v "$tool" >/dev/null || die "'$tool' not found"
done
BUSYBOX="$(command -v busybox || true)"
[[ -n "$BUSYBOX" ]] || die "busybox not found (apt-get install busybox-static)"
# Must be the static busybox: it runs inside the guest with no libc.
if ! file_out="$(LC_ALL=C readelf -d "$BUSYBOX" 2>/dev/null)" || grep -q NEEDED <<<"$file_out"; then
  die "$BUSYBOX is not statically linked (apt-get install busybox-static)"
fi

exec 9>"$OUT/.lock"
flock -w 600 9 || die "timed out waiting for the lock on $OUT/.lock"

# --- which kernel -----------------------------------------------------------------
KVER="${RAVEL_GUEST_KERNEL:-}"
if [[ -z "$KVER" ]]; then
  resolve() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null \
      | sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n1
  }
  KVER="$(resolve)"
  if [[ -z "$KVER" && "$(id -u)" == 0 ]]; then
    # a fresh machine may have no package lists yet
    timeout 600 apt-get update -qq >&2 || true
    KVER="$(resolve)"
  fi
  [[ -n "$KVER" ]] || die "cannot resolve linux-image-cloud-amd64 with apt-cache (run apt-get update?)"
fi
KPKG="linux-image-$KVER"

# --- stamp: hash of every input -----------------------------------------------------
STAMP="$(
  {
    echo "kernel=$KVER modules=${MODULES[*]}"
    sha256sum "$HERE/build.sh" "$HERE/init" "$HERE/udhcpc.script" "$HERE/kvmtest.c" "$HERE/udpsend.c" \
      "$BUSYBOX" | cut -d' ' -f1
    gcc --version | head -n1
  } | sha256sum | cut -d' ' -f1
)"
if [[ -f "$OUT/.stamp" && "$(cat "$OUT/.stamp")" == "$STAMP" \
      && -s "$OUT/vmlinuz" && -s "$OUT/initrd.img" && -s "$OUT/VERSION" ]]; then
  exit 0
fi

log "building guest image ($KPKG) into $OUT"
WORK="$(mktemp -d "$OUT/.build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# --- kernel .deb (kept in OUTDIR/debs so a rebuild does not download again) -----------
mkdir -p "$OUT/debs"
DEB="$(ls "$OUT/debs/${KPKG}_"*_amd64.deb 2>/dev/null | head -n1 || true)"
if [[ -z "$DEB" ]]; then
  (cd "$WORK" && timeout 600 apt-get download -q -o APT::Sandbox::User=root "$KPKG" >&2) \
    || die "apt-get download $KPKG failed"
  mv "$WORK/${KPKG}_"*_amd64.deb "$OUT/debs/"
  DEB="$(ls "$OUT/debs/${KPKG}_"*_amd64.deb | head -n1)"
fi
KDEB_VERSION="$(dpkg-deb -f "$DEB" Version)"
dpkg-deb -x "$DEB" "$WORK/kernel"
KMOD="$WORK/kernel/lib/modules/$KVER"
[[ -f "$WORK/kernel/boot/vmlinuz-$KVER" && -d "$KMOD" ]] || die "unexpected layout in $DEB"

# modules.dep is made by depmod at install time, so it is not in the .deb:
# busybox depmod builds it from the unpacked tree.
"$BUSYBOX" depmod -b "$WORK/kernel" "$KVER"

# --- initramfs tree -------------------------------------------------------------------
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,mnt,var/log}
chmod 1777 "$ROOT/tmp"
cp "$BUSYBOX" "$ROOT/bin/busybox"
# One symlink per applet, at the path busybox itself reports for it.
"$BUSYBOX" --list-full | while read -r applet; do
  [[ -e "$ROOT/$applet" || -L "$ROOT/$applet" ]] && continue
  mkdir -p "$ROOT/$(dirname "$applet")"
  ln -s /bin/busybox "$ROOT/$applet"
done
[[ -L "$ROOT/bin/sh" ]] || ln -sf busybox "$ROOT/bin/sh"

install -m 0755 "$HERE/init" "$ROOT/init"
install -m 0755 "$HERE/udhcpc.script" "$ROOT/etc/udhcpc.script"
gcc -static -O2 -Wall -o "$ROOT/usr/bin/kvmtest" "$HERE/kvmtest.c"
strip "$ROOT/usr/bin/kvmtest" 2>/dev/null || true
gcc -static -O2 -Wall -o "$ROOT/usr/bin/udpsend" "$HERE/udpsend.c"
strip "$ROOT/usr/bin/udpsend" 2>/dev/null || true

# Modules: the closure of MODULES over modules.dep, in load order (dependencies first).
MDIR="$ROOT/lib/modules/$KVER"
mkdir -p "$MDIR"
declare -A SEEN=()
ORDER=()
resolve() {  # $1: module path relative to $KMOD
  local rel="$1" dep
  [[ -n "${SEEN[$rel]:-}" ]] && return 0
  SEEN[$rel]=1
  for dep in $(sed -n "s|^${rel//./\\.}: *||p" "$KMOD/modules.dep"); do
    resolve "$dep"
  done
  ORDER+=("$rel")
}
for m in "${MODULES[@]}"; do
  # modules.dep spells names with '-' or '_' as the file is named.
  pat="${m//_/[-_]}"
  rel="$(grep -E "^([^:]*/)?${pat}\.ko:" "$KMOD/modules.dep" | head -n1 | cut -d: -f1 || true)"
  if [[ -z "$rel" ]]; then
    if grep -qE "/${pat}\.ko$" "$KMOD/modules.builtin"; then continue; fi
    die "module $m is not in $KPKG"
  fi
  resolve "$rel"
done
for rel in "${ORDER[@]}"; do
  mkdir -p "$MDIR/$(dirname "$rel")"
  cp "$KMOD/$rel" "$MDIR/$rel"
done
cp "$KMOD/modules.builtin" "$KMOD/modules.order" "$MDIR/"
[[ -f "$KMOD/modules.builtin.modinfo" ]] && cp "$KMOD/modules.builtin.modinfo" "$MDIR/"
# modules.dep (and alias/symbols) for the pruned tree, so `modprobe X` works in the guest.
"$BUSYBOX" depmod -b "$ROOT" "$KVER"
# Tables for init, which picks modules with shell builtins only (forks are slow
# under TCG): "<name> <path> <dependency names>" in load order, and the pci/virtio
# modalias globs of the drivers.
modname() { local b="${1##*/}"; b="${b%.ko}"; echo "${b//-/_}"; }
for rel in "${ORDER[@]}"; do
  line="$(modname "$rel") $rel"
  for dep in $(sed -n "s|^${rel//./\\.}: *||p" "$KMOD/modules.dep"); do
    line+=" $(modname "$dep")"
  done
  echo "$line"
done > "$ROOT/etc/ravel-modules"
sed -n 's/^alias \(\(pci\|virtio\):[^ ]*\) \([^ ]*\)$/\1 \3/p' "$MDIR/modules.alias" \
  > "$ROOT/etc/ravel-aliases"
[[ -s "$ROOT/etc/ravel-aliases" ]] || die "no pci/virtio aliases in modules.alias"

cat > "$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
cat > "$ROOT/etc/group" <<'EOF'
root:x:0:
EOF
echo "ravel" > "$ROOT/etc/hostname"
: > "$ROOT/etc/fstab"
printf 'ravel-guest kernel=%s (%s) busybox=%s\n' "$KVER" "$KDEB_VERSION" \
  "$("$BUSYBOX" | head -n1 | awk '{print $2}')" > "$ROOT/etc/ravel-release"

# A /dev/console node lets the kernel give init a console before devtmpfs is mounted.
# Only root can make it; init copes without it.
if [[ $EUID -eq 0 ]]; then
  mknod -m 600 "$ROOT/dev/console" c 5 1
  mknod -m 666 "$ROOT/dev/null" c 1 3
fi

# --- pack -----------------------------------------------------------------------------
# busybox cpio -o takes the file list on stdin; -R 0:0 makes everything root's.
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort \
  | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) | gzip -6 -n > "$WORK/initrd.img"
[[ -s "$WORK/initrd.img" ]] || die "empty initramfs"

cp "$WORK/kernel/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
{
  echo "kernel=$KVER"
  echo "kernel_package=$KPKG $KDEB_VERSION"
  echo "busybox=$("$BUSYBOX" | head -n1 | awk '{print $2}')"
  echo "modules=${MODULES[*]}"
  echo "stamp=$STAMP"
} > "$WORK/VERSION"

mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
mv -f "$WORK/VERSION" "$OUT/VERSION"
echo "$STAMP" > "$OUT/.stamp"
log "done: $(du -h "$OUT/initrd.img" | cut -f1) initrd, kernel $KVER"
