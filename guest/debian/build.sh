#!/usr/bin/env bash
# Build two stock Debian 12 (bookworm) cloud-style disk images from Debian packages alone:
#
#   guest/debian/build.sh OUTDIR
#
#   OUTDIR/debian12-bios.qcow2   MBR disk, one ext4 root partition, GRUB (grub-pc) in the MBR
#   OUTDIR/debian12-uefi.qcow2   GPT disk, EFI system partition (FAT32) + ext4 root, GRUB
#                                (grub-efi-amd64) also at the removable path \EFI\BOOT\BOOTX64.EFI
#   OUTDIR/SHA256SUMS            checksums of both images
#   OUTDIR/.stamp                sha256 of this script when the images were made
#
# Both hold the same package set: linux-image-amd64, systemd, openssh-server, cloud-init,
# qemu-guest-agent, netplan.io + systemd-networkd/resolved (what Debian's own cloud images
# use), sudo, iputils-ping... and nothing ravel-specific: they stand for the stock cloud image
# a user brings. Kernel and GRUB talk on the serial console (console=ttyS0,115200).
#
# Idempotent: exits at once when the stamp matches this script's hash and both images still
# match SHA256SUMS. Concurrent runs on one OUTDIR serialise on OUTDIR/.lock. All temporary
# files live in OUTDIR/.work.* and are removed at the end, on failure too; every mount is
# made inside a private mount namespace (unshare), so none can leak into the host's mount
# table; loop devices are detached by the exit trap (and stale ones from a killed run are
# detached by the next run).
#
# Needs root and: mmdebstrap, sfdisk (fdisk), losetup/unshare (util-linux), mkfs.ext4
# (e2fsprogs), mkfs.vfat (dosfstools), mcopy (mtools), qemu-img (qemu-utils), and a Debian
# mirror. No vfat or other kernel module is needed on the build host.
#
# Environment:
#   RAVEL_DEBIAN_MIRROR    Debian archive (default http://deb.debian.org/debian)
#   RAVEL_DEBIAN_SECURITY  security archive (default http://deb.debian.org/debian-security)
#   RAVEL_GUEST_VERBOSE    set to 1 for a trace of every command
set -euo pipefail
[[ "${RAVEL_GUEST_VERBOSE:-0}" == 1 ]] && set -x

die() { echo "guest/debian/build.sh: error: $*" >&2; exit 1; }
log() { echo "guest/debian/build.sh: $*" >&2; }

SUITE=bookworm
DISK_SIZE=2G
ESP_MIB=127
# The image's packages (their dependencies come along; no Recommends, like a minimal install).
PACKAGES=(
  linux-image-amd64 initramfs-tools systemd systemd-sysv udev dbus
  openssh-server cloud-init cloud-guest-utils qemu-guest-agent
  netplan.io systemd-resolved libnss-resolve libnss-myhostname
  sudo iputils-ping iproute2 procps e2fsprogs
  grub2-common grub-pc-bin grub-efi-amd64-bin ucf
)

# ====================================================================================
# Inner step, run by the outer script inside `unshare --mount`: fill one image's
# partitions (already made and mapped to loop devices) and install its boot loader.
# Every mount made here dies with this mount namespace.
# ====================================================================================
assemble() {
  : "${KIND:?}" "${WORK:?}" "${DISK_LOOP:?}" "${ROOT_LOOP:?}" "${ROOT_UUID:?}"
  local mnt="$WORK/mnt-$KIND"
  mkdir -p "$mnt"

  # A private /dev: the loop devices get ordinary disk names, so that grub-probe,
  # grub-install and update-grub treat them like real disks (they refuse loop devices
  # backed by files), and the chroot sees nothing of the host's devices.
  majmin() {  # DEVICE -> "MAJOR MINOR"
    local s
    s="$(stat -L -c '%t %T' "$1")" || die "cannot stat $1"
    printf '%d %d' "0x${s% *}" "0x${s#* }"
  }
  local disk_mm root_mm esp_mm=""
  disk_mm="$(majmin "$DISK_LOOP")"; root_mm="$(majmin "$ROOT_LOOP")"
  [[ "$KIND" == bios ]] || esp_mm="$(majmin "${ESP_LOOP:?}")"
  mount -t tmpfs -o mode=0755,size=1m ravel-dev /dev
  mknod -m 666 /dev/null c 1 3;    mknod -m 666 /dev/zero c 1 5;  mknod -m 666 /dev/full c 1 7
  mknod -m 666 /dev/random c 1 8;  mknod -m 666 /dev/urandom c 1 9; mknod -m 666 /dev/tty c 5 0
  ln -s /proc/self/fd /dev/fd; ln -s fd/0 /dev/stdin; ln -s fd/1 /dev/stdout; ln -s fd/2 /dev/stderr
  mkdir -p /dev/disk/by-uuid /dev/pts /dev/shm
  # vda = the whole disk; vdb = the root partition; vdc = the ESP (each its own loop device)
  mknod -m 660 /dev/vda b ${disk_mm}
  mknod -m 660 /dev/vdb b ${root_mm}
  ln -s ../../vdb "/dev/disk/by-uuid/$ROOT_UUID"
  if [[ "$KIND" == uefi ]]; then
    mknod -m 660 /dev/vdc b ${esp_mm}
    ln -s ../../vdc "/dev/disk/by-uuid/${ESP_UUID:?}"
  fi

  mount /dev/vdb "$mnt"
  cp -a "$WORK/rootfs/." "$mnt/"
  if [[ "$KIND" == uefi ]]; then
    # The ESP is not mounted (many build hosts' kernels, this one included, have no vfat):
    # a tmpfs whose mount source reads /dev/vdc stands in for it, so grub-install sees a
    # FAT partition (grub-probe reads the source from mountinfo and probes the device
    # itself) and writes its files there; mtools copies them into the FAT file system.
    mkdir -p "$mnt/boot/efi"
    mount -t tmpfs -o mode=0755,size=64m /dev/vdc "$mnt/boot/efi"
  fi
  mount --rbind /dev "$mnt/dev"
  mount -t proc proc "$mnt/proc"
  mount -t sysfs sysfs "$mnt/sys"
  mount -t tmpfs -o mode=0755 tmpfs "$mnt/run"
  in_root() { chroot "$mnt" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
                DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"; }

  # fstab by UUID, as Debian's cloud images have it
  {
    echo "# <file system> <mount point> <type> <options> <dump> <pass>"
    echo "UUID=$ROOT_UUID / ext4 rw,discard,errors=remount-ro,x-systemd.growfs 0 1"
    [[ "$KIND" == uefi ]] && echo "UUID=$ESP_UUID /boot/efi vfat defaults 0 0"
  } > "$mnt/etc/fstab"

  # The initramfs again, now that the root file system exists: its fsck hook looks up the
  # root device's type (mmdebstrap's first initramfs had no root device, hence no fsck).
  in_root update-initramfs -u -k all >&2
  grep -q 'sbin/fsck.ext4$' <(in_root lsinitramfs "/boot/initrd.img-$(ls "$mnt/lib/modules" | head -n1)") \
    || die "the initramfs has no fsck.ext4"

  # GRUB: the platform's package from Debian, preseeded the way a cloud image wants it
  local pkg
  if [[ "$KIND" == bios ]]; then pkg=grub-pc; else pkg=grub-efi-amd64; fi
  in_root debconf-set-selections <<EOF
$pkg grub2/linux_cmdline string console=tty0 console=ttyS0,115200
$pkg grub2/linux_cmdline_default string
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
grub-efi-amd64 grub2/force_efi_extra_removable boolean true
grub-efi-amd64 grub2/update_nvram boolean false
EOF
  cp "$WORK"/debs/${pkg}_*.deb "$mnt/tmp/"
  in_root sh -c "dpkg -i /tmp/${pkg}_*.deb && rm -f /tmp/${pkg}_*.deb" >&2
  local g="$mnt/etc/default/grub"
  [[ -f "$g" ]] || die "$pkg did not create /etc/default/grub"
  sed -i -e 's/^GRUB_TIMEOUT=.*/GRUB_TIMEOUT=1/' \
         -e 's/^GRUB_CMDLINE_LINUX_DEFAULT=.*/GRUB_CMDLINE_LINUX_DEFAULT=""/' \
         -e 's/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200"/' \
         -e '/^#\?GRUB_TERMINAL=/d' -e '/^#\?GRUB_SERIAL_COMMAND=/d' "$g"
  printf '%s\n' '' '# serial console first-class: boot messages and the login prompt on ttyS0' \
    'GRUB_TERMINAL="console serial"' 'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"' >> "$g"

  if [[ "$KIND" == bios ]]; then
    # part_msdos and ext2 in the core image: the loop devices hide the partition table from
    # grub-probe, so it cannot find them by itself; the core image finds /boot/grub by UUID.
    in_root grub-install --target=i386-pc --modules="part_msdos ext2" /dev/vda >&2
    [[ -s "$mnt/boot/grub/i386-pc/core.img" ]] || die "grub-install wrote no core.img"
  else
    # \EFI\debian\grubx64.efi plus the removable-media copy \EFI\BOOT\BOOTX64.EFI (boots
    # with no NVRAM entry); grub2/force_efi_extra_removable keeps both in step on upgrades.
    in_root grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=debian \
      --modules="part_gpt ext2" --no-nvram --force-extra-removable >&2
    [[ -s "$mnt/boot/efi/EFI/BOOT/BOOTX64.EFI" ]] || die "grub-install wrote no BOOTX64.EFI"
    MTOOLS_SKIP_CHECK=1 mcopy -i /dev/vdc -s -p -Q "$mnt/boot/efi/EFI" ::/ \
      || die "cannot copy the EFI files into the ESP"
    MTOOLS_SKIP_CHECK=1 mdir -i /dev/vdc -b ::/EFI/BOOT ::/EFI/debian >&2
    umount "$mnt/boot/efi"
  fi
  in_root update-grub >&2
  grep -q "root=UUID=$ROOT_UUID" "$mnt/boot/grub/grub.cfg" || die "grub.cfg has no root=UUID=$ROOT_UUID"

  # cloud-image hygiene (the shared tree already has no SSH host keys, no machine-id)
  rm -rf "$mnt/tmp/"* "$mnt/var/cache/debconf/"*-old "$mnt/var/lib/apt/lists/"*
  : > "$mnt/etc/machine-id"

  # discard the blocks that the regenerated initramfs freed, so they compress to nothing
  fstrim "$mnt" >&2 || log "warning: fstrim failed; the image will be larger"
  sync
  umount -R "$mnt"
}

if [[ "${1:-}" == "--assemble" ]]; then
  assemble
  exit 0
fi

# ====================================================================================
# Outer script
# ====================================================================================
[[ $# -eq 1 ]] || die "usage: guest/debian/build.sh OUTDIR"
[[ "$(id -u)" == 0 ]] || die "must run as root (loop devices, mounts, chroot)"
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
IMAGES=(debian12-bios.qcow2 debian12-uefi.qcow2)

for tool in mmdebstrap sfdisk losetup unshare findmnt mkfs.ext4 mkfs.vfat mcopy fsck.vfat \
            blkid qemu-img sha256sum flock timeout chroot mknod; do
  command -v "$tool" >/dev/null || die "'$tool' not found (make system installs it)"
done

exec 9>"$OUT/.lock"
flock -w 3600 9 || die "timed out waiting for the lock on $OUT/.lock"

STAMP="$(sha256sum "$SELF" | cut -d' ' -f1)"
up_to_date() {
  [[ -f "$OUT/.stamp" && "$(cat "$OUT/.stamp")" == "$STAMP" && -f "$OUT/SHA256SUMS" ]] || return 1
  local i
  for i in "${IMAGES[@]}"; do
    [[ -s "$OUT/$i" ]] && grep -q " \*\?$i\$" "$OUT/SHA256SUMS" || return 1
  done
  (cd "$OUT" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1)
}
if up_to_date; then
  log "up to date: ${IMAGES[*]} in $OUT"
  exit 0
fi

# A run that was killed may have left its work directory and loop devices behind. (Its mounts
# lived in private mount namespaces and died with it; anything mounted under a work directory
# is still unmounted before it is removed, and rm never crosses into another file system.)
umount_under() {  # lazily unmount everything mounted below directory $1, deepest first
  local m
  while read -r m; do
    [[ "$m" == "$1"/* ]] && umount -l "$m" 2>/dev/null || true
  done < <(findmnt -rn -o TARGET 2>/dev/null | sort -r)
}
remove_workdir() {
  umount_under "$1"
  detach_loops_under "$1"
  rm -rf --one-file-system "$1"
}
detach_loops_under() {  # detach every loop device whose backing file is under $1
  local dev file
  while read -r dev file; do
    [[ "$file" == "$1"/* ]] && losetup -d "$dev" 2>/dev/null || true
  done < <(losetup -n -l -O NAME,BACK-FILE 2>/dev/null)
}
for stale in "$OUT"/.work.*; do
  [[ -d "$stale" ]] || continue
  log "removing stale $stale"
  remove_workdir "$stale"
done

WORK="$(mktemp -d "$OUT/.work.XXXXXX")"
exec 8>&2  # the exit trap may run while a step's output goes to its log
LOOPS=()
CHILD=""
# bounded SECONDS CMD...: run CMD under `timeout`, which puts it in a process group of its own;
# waiting in the background lets a signal to this script stop the whole group at once.
bounded() {
  local t="$1" rc=0
  shift
  timeout "$t" "$@" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}
cleanup() {
  local rc=$? l i
  if [[ -n "$CHILD" ]]; then  # interrupted: end the running step (and its mounts' namespace)
    kill -TERM -- "-$CHILD" 2>/dev/null || true
    for i in $(seq 100); do kill -0 -- "-$CHILD" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$CHILD" 2>/dev/null || true
    sleep 0.5
  fi
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  remove_workdir "$WORK"
  [[ $rc == 0 ]] || log "failed (exit $rc); cleaned up $WORK" 2>&8
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

T0=$SECONDS
# ---- 1. the root tree, once, shared by both images ---------------------------------
MIRROR="${RAVEL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY="${RAVEL_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
mkdir -p "$WORK/debs"
log "mmdebstrap $SUITE ($(IFS=,; echo "${PACKAGES[*]}"))"
# The GRUB platform packages conflict with each other: the tree gets both platforms'
# binaries (grub-pc-bin, grub-efi-amd64-bin), and each image then gets its own
# grub-pc / grub-efi-amd64 .deb, downloaded here with the tree's own apt configuration.
# mmdebstrap mounts /dev, /proc and /sys inside the tree: in a private mount namespace, so
# that they go away with it whatever happens.
TMPDIR="$WORK" bounded 1800 unshare --mount --propagation private mmdebstrap --mode=root --variant=minbase --format=directory \
  --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  --aptopt='Acquire::Languages "none"' \
  --essential-hook='printf "%s\n" "locales locales/locales_to_be_generated multiselect en_US.UTF-8 UTF-8" "locales locales/default_environment_locale select en_US.UTF-8" | chroot "$1" debconf-set-selections' \
  --customize-hook="cd '$WORK/debs' && APT_CONFIG=\"\$MMDEBSTRAP_APT_CONFIG\" apt-get -q download grub-pc grub-efi-amd64" \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd.service' \
  --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*_key "$1"/etc/ssh/ssh_host_*_key.pub' \
  --customize-hook='echo debian > "$1/etc/hostname"' \
  --customize-hook='printf "%s\n" "127.0.0.1	localhost" "::1		localhost ip6-localhost ip6-loopback" "ff02::1		ip6-allnodes" "ff02::2		ip6-allrouters" > "$1/etc/hosts"' \
  --customize-hook='rm -f "$1/var/lib/dbus/machine-id"; : > "$1/etc/machine-id"' \
  "$SUITE" "$WORK/rootfs" \
  "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main" \
  > "$WORK/mmdebstrap.log" 2>&1 || { tail -n 30 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
ls "$WORK"/debs/grub-pc_*.deb "$WORK"/debs/grub-efi-amd64_*.deb >/dev/null 2>&1 \
  || die "could not download grub-pc / grub-efi-amd64"
KVER="$(basename "$(ls -d "$WORK"/rootfs/lib/modules/* | head -n1)")"
# initramfs-tools' default MODULES=most takes every storage driver, so the root disk may sit
# on any controller ravel offers; check the ones it relies on.
chroot "$WORK/rootfs" lsinitramfs "/boot/initrd.img-$KVER" > "$WORK/initramfs.list" \
  || die "cannot list the initramfs"
for m in vmw_pvscsi virtio_blk virtio_scsi virtio_pci ahci ata_piix sym53c8xx mptspi nvme; do
  grep -q "/$m\.ko" "$WORK/initramfs.list" || die "$m.ko is not in the initramfs"
done
log "root tree ready in $((SECONDS - T0)) s (kernel $KVER)"

# ---- 2. one disk image per firmware --------------------------------------------------
part_geometry() {  # FILE N -> "start size" (512-byte sectors) of partition N
  sfdisk -d "$1" | sed -n "s|^$1$2 : start= *\([0-9]*\), size= *\([0-9]*\),.*|\1 \2|p"
}
new_loop() {  # VAR FILE [losetup options]: map FILE on a free loop device, its name into VAR
  local dev
  dev="$(losetup -f --show "${@:3}" "$2")" || die "losetup failed"
  LOOPS+=("$dev")
  printf -v "$1" '%s' "$dev"
}
drop_loop() {
  local l keep=()
  losetup -d "$1"
  for l in "${LOOPS[@]}"; do [[ "$l" == "$1" ]] || keep+=("$l"); done
  LOOPS=("${keep[@]}")
}

build_image() {  # bios|uefi
  local kind="$1" raw="$WORK/$1.raw" geo start size root_n
  local t=$SECONDS
  rm -f "$raw"
  truncate -s "$DISK_SIZE" "$raw"
  if [[ "$kind" == bios ]]; then
    printf 'label: dos\nunit: sectors\nstart=2048, type=83, bootable\n' | sfdisk -q "$raw"
    root_n=1
  else
    printf 'label: gpt\nunit: sectors\nstart=2048, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system partition"\nstart=%d, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="root"\n' \
      $((ESP_MIB * 2048)) $((2048 + ESP_MIB * 2048)) | sfdisk -q "$raw"
    root_n=2
  fi

  local disk_loop root_loop esp_loop="" esp_uuid=""
  new_loop disk_loop "$raw"
  geo="$(part_geometry "$raw" "$root_n")"; start="${geo% *}"; size="${geo#* }"
  [[ -n "$start" && -n "$size" ]] || die "cannot read partition $root_n of $raw"
  new_loop root_loop "$raw" -o $((start * 512)) --sizelimit $((size * 512))
  local root_uuid
  root_uuid="$(cat /proc/sys/kernel/random/uuid)"
  mkfs.ext4 -q -F -U "$root_uuid" "$root_loop"
  if [[ "$kind" == uefi ]]; then
    geo="$(part_geometry "$raw" 1)"; start="${geo% *}"; size="${geo#* }"
    new_loop esp_loop "$raw" -o $((start * 512)) --sizelimit $((size * 512))
    mkfs.vfat -F 32 -n EFI "$esp_loop" >/dev/null
    esp_uuid="$(blkid -s UUID -o value "$esp_loop")"
  fi

  KIND="$kind" WORK="$WORK" DISK_LOOP="$disk_loop" ROOT_LOOP="$root_loop" ROOT_UUID="$root_uuid" \
  ESP_LOOP="$esp_loop" ESP_UUID="$esp_uuid" RAVEL_GUEST_VERBOSE="${RAVEL_GUEST_VERBOSE:-0}" \
    bounded 1200 unshare --mount --propagation private bash "$SELF" --assemble \
    > "$WORK/assemble-$kind.log" 2>&1 \
    || { tail -n 40 "$WORK/assemble-$kind.log" >&2; die "assembling the $kind image failed"; }

  e2fsck -f -n "$root_loop" >/dev/null 2>&1 || die "$kind root file system does not check clean"
  [[ -z "$esp_loop" ]] || fsck.vfat -n "$esp_loop" >/dev/null 2>&1 || die "the ESP does not check clean"
  [[ -z "$esp_loop" ]] || drop_loop "$esp_loop"
  drop_loop "$root_loop"
  drop_loop "$disk_loop"

  bounded 1800 qemu-img convert -c -O qcow2 "$raw" "$WORK/debian12-$kind.qcow2"
  rm -f "$raw"
  log "$kind image: $(du -h "$WORK/debian12-$kind.qcow2" | cut -f1) in $((SECONDS - t)) s"
}

build_image bios
build_image uefi
rm -rf --one-file-system "$WORK/rootfs"

# ---- 3. publish: images, then checksums, then the stamp --------------------------------
rm -f "$OUT/.stamp"
for i in "${IMAGES[@]}"; do mv -f "$WORK/$i" "$OUT/$i"; done
(cd "$OUT" && sha256sum "${IMAGES[@]}" > SHA256SUMS.tmp && mv -f SHA256SUMS.tmp SHA256SUMS)
echo "$STAMP" > "$OUT/.stamp"
log "done in $((SECONDS - T0)) s: ${IMAGES[*]} in $OUT"
