"""Which hosts run several guests of one base image, and so turn on KSM (same-page merging,
ravel/host/ksm.py). Pure.

Only in cost mode: merging costs the host CPU (ksmd scans guest memory), which performance
mode keeps for the guests. A guest's image is its first disk's base image, or its kernel and
initrd for a direct kernel boot (the same guest software either way).

The plan does not pack tighter on it. The saving was measured (docs/capacity.md, "KSM": ten
real Debian guests on one host), but it comes minutes after boot, when ksmd has scanned the
guests, while a guest touches its memory from the start; and it depends on the image. So a
plan's memory stays what the guests could use unmerged, and the saving shows up in what the
machine has free afterwards (admission reads it, ravel/plan/admission.py).
"""

from __future__ import annotations

from collections import Counter

from ..model.blueprint import VM
from .placement import Placement


def image_of(vm: VM) -> str | None:
    for disk in vm.disks:
        if disk.image:
            return disk.image
    if vm.boot is not None and vm.boot.kernel:
        return f"{vm.boot.kernel}+{vm.boot.initrd or ''}"
    return None


def ksm_hosts(placement: Placement, vms: dict[str, VM], optimize: str) -> dict[str, int]:
    """Host -> how many of its guests share its most common image, for hosts where that is 2+."""
    if optimize != "cost":
        return {}
    out = {}
    for host in placement.hosts:
        images = Counter(image for vm in host.vms if (image := image_of(vms[vm])) is not None)
        most = max(images.values(), default=0)
        if most >= 2:
            out[host.name] = most
    return out
