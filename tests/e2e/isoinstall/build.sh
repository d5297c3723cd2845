#!/usr/bin/env bash
# Build the small "installer" ISO of tests/e2e/test_iso_install.py.
#
#   tests/e2e/isoinstall/build.sh OUTDIR      prints the ISO's path on stdout
#
# The ISO (grub-mkrescue, BIOS only: El Torito for CD boot and an MBR boot sector, so a byte
# copy of it on a disk boots too, with the same GRUB) holds:
#   /boot/grub/grub.cfg   boots /vmlinuz at once, on the serial line, passing GRUB's $root and
#                         $cmdpath to the kernel (ravel.root=, ravel.cmdpath=)
#   /vmlinuz              the Debian kernel of the same release as the demo guest's, but the
#                         generic flavour: the cloud flavour has no AHCI driver, and on the q35
#                         machine (a VM with virtio disks) ravel puts CD drives on q35's AHCI
#   /initrd.img           busybox-static, the kernel modules for virtio disks, AHCI/IDE CD drives
#                         and ISO 9660 (with what they depend on), and ./init as /init
#   /ravel-installer      a tag the installer checks on the CD before copying it
#
# Cached by content: OUTDIR/installer-<hash of every input>.iso; a second run prints the path at
# once. The kernel .deb is kept in OUTDIR/debs. Concurrent runs serialise on OUTDIR/.lock.
#
# Environment: RAVEL_ISO_KERNEL  kernel ABI, e.g. 6.1.0-57-amd64 (default: the demo guest's
# release, from .cache/guest/VERSION, in the generic flavour; else what linux-image-amd64 needs)
set -euo pipefail

die() { echo "isoinstall/build.sh: error: $*" >&2; exit 1; }
log() { echo "isoinstall/build.sh: $*" >&2; }

[[ $# -eq 1 ]] || die "usage: build.sh OUTDIR"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOTDIR="$(cd "$HERE/../../.." && pwd)"
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"

for tool in grub-mkrescue xorriso apt-get dpkg-deb gzip sha256sum flock timeout; do
  command -v "$tool" >/dev/null || die "'$tool' not found (apt-get install grub-pc-bin grub-common xorriso)"
done
[[ -f /usr/lib/grub/i386-pc/boot_hybrid.img ]] || die "GRUB's i386-pc images are missing (apt-get install grub-pc-bin)"
BUSYBOX="$(command -v busybox || true)"
[[ -n "$BUSYBOX" ]] && ! LC_ALL=C readelf -d "$BUSYBOX" 2>/dev/null | grep -q NEEDED \
  || die "a static busybox is needed (apt-get install busybox-static)"

exec 9>"$OUT/.lock"
flock -w 600 9 || die "timed out waiting for $OUT/.lock"

# --- which kernel ------------------------------------------------------------------------
KVER="${RAVEL_ISO_KERNEL:-}"
if [[ -z "$KVER" && -f "$ROOTDIR/.cache/guest/VERSION" ]]; then
  demo="$(sed -n 's/^kernel=//p' "$ROOTDIR/.cache/guest/VERSION")"
  [[ "$demo" == *-cloud-amd64 ]] && KVER="${demo%-cloud-amd64}-amd64"
fi
if [[ -z "$KVER" ]]; then
  KVER="$(apt-cache depends linux-image-amd64 2>/dev/null \
    | sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*-amd64\)$/\1/p' | head -n1)"
fi
[[ -n "$KVER" ]] || die "cannot tell which kernel to use (set RAVEL_ISO_KERNEL)"
KPKG="linux-image-$KVER"
MODULES=(virtio_pci virtio_blk ahci ata_piix sr_mod isofs)

# --- cache key -------------------------------------------------------------------------------
KEY="$(
  {
    echo "kernel=$KVER modules=${MODULES[*]}"
    sha256sum "$HERE/build.sh" "$HERE/init" "$BUSYBOX" | cut -d' ' -f1
    dpkg-query -W -f='${Version}\n' grub-pc-bin xorriso 2>/dev/null || true
  } | sha256sum | cut -c1-16
)"
ISO="$OUT/installer-$KEY.iso"
if [[ -s "$ISO" ]]; then
  echo "$ISO"
  exit 0
fi

log "building $ISO ($KPKG)"
WORK="$(mktemp -d "$OUT/.build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$OUT/debs"
DEB="$(ls "$OUT/debs/${KPKG}_"*_amd64.deb 2>/dev/null | head -n1 || true)"
if [[ -z "$DEB" ]]; then
  (cd "$WORK" && timeout 600 apt-get download -q -o APT::Sandbox::User=root "$KPKG" >&2) \
    || die "apt-get download $KPKG failed"
  mv "$WORK/${KPKG}_"*_amd64.deb "$OUT/debs/"
  DEB="$(ls "$OUT/debs/${KPKG}_"*_amd64.deb | head -n1)"
fi
dpkg-deb -x "$DEB" "$WORK/kernel"
KMOD="$WORK/kernel/lib/modules/$KVER"
[[ -f "$WORK/kernel/boot/vmlinuz-$KVER" && -d "$KMOD" ]] || die "unexpected layout in $DEB"
"$BUSYBOX" depmod -b "$WORK/kernel" "$KVER"

# --- initramfs ----------------------------------------------------------------------------
R="$WORK/initrd"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc}
cp "$BUSYBOX" "$R/bin/busybox"
"$BUSYBOX" --list-full | while read -r applet; do
  [[ -e "$R/$applet" || -L "$R/$applet" ]] && continue
  mkdir -p "$R/$(dirname "$applet")"
  ln -s /bin/busybox "$R/$applet"
done
install -m 0755 "$HERE/init" "$R/init"
# the modules, with everything they depend on (modules.dep is closed over dependencies)
declare -A SEEN=()
add() {
  local rel="$1" dep
  [[ -n "${SEEN[$rel]:-}" ]] && return 0
  SEEN[$rel]=1
  mkdir -p "$R/lib/modules/$KVER/$(dirname "$rel")"
  cp "$KMOD/$rel" "$R/lib/modules/$KVER/$rel"
  for dep in $(sed -n "s|^${rel//./\\.}: *||p" "$KMOD/modules.dep"); do add "$dep"; done
}
for m in "${MODULES[@]}"; do
  pat="${m//_/[-_]}"
  rel="$(grep -E "^([^:]*/)?${pat}\.ko(\.[gx]z)?:" "$KMOD/modules.dep" | head -n1 | cut -d: -f1 || true)"
  if [[ -z "$rel" ]]; then
    grep -qE "/${pat}\.ko$" "$KMOD/modules.builtin" || die "module $m is not in $KPKG"
    continue
  fi
  add "$rel"
done
cp "$KMOD/modules.builtin" "$KMOD/modules.order" "$R/lib/modules/$KVER/"
"$BUSYBOX" depmod -b "$R" "$KVER"
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) \
  | gzip -6 -n > "$WORK/initrd.img"

# --- the ISO ------------------------------------------------------------------------------
T="$WORK/iso"
mkdir -p "$T/boot/grub"
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$T/vmlinuz"
cp "$WORK/initrd.img" "$T/initrd.img"
echo "ravel test installer, kernel $KVER" > "$T/ravel-installer"
cat > "$T/boot/grub/grub.cfg" <<'EOF'
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
echo "grub: root=($root) cmdpath=$cmdpath"
linux /vmlinuz console=ttyS0,115200 quiet panic=10 ravel.root=$root ravel.cmdpath=$cmdpath
initrd /initrd.img
boot
EOF
# BIOS only (-d i386-pc: no EFI image, a smaller ISO); only the GRUB modules this needs
timeout 300 grub-mkrescue -d /usr/lib/grub/i386-pc -o "$WORK/out.iso" \
  --install-modules="linux normal iso9660 biosdisk part_msdos search search_fs_uuid serial echo test" \
  --fonts= --locales= --themes= "$T" >"$WORK/mkrescue.log" 2>&1 \
  || { cat "$WORK/mkrescue.log" >&2; die "grub-mkrescue failed"; }
[[ -s "$WORK/out.iso" ]] || die "grub-mkrescue made no ISO"
rm -f "$OUT"/installer-*.iso  # one cached ISO: the current one
mv "$WORK/out.iso" "$ISO"
log "done: $(du -h "$ISO" | cut -f1) $ISO"
echo "$ISO"
