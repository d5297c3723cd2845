"""Which accelerator a host's VMs really run with.

The plan guesses from the catalogue (``kvm`` where the instance type offers hardware
virtualization, else ``tcg``); the host's own runtime settles it once, when the host is first
made, with ``ravel-host facts``, whose KVM probe runs a vCPU and times it (ravel/host/kvm.py).
KVM only where that probe says it works: /dev/kvm existing, or the catalogue promising it,
proves nothing. The probe is kept in the host's record with the host's ref, so re-publishing
asks nothing, and a host the provider replaced (a new ref) is probed again. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Accel = str  # "kvm" | "tcg"


@dataclass(frozen=True)
class AccelChoice:
    accel: Accel
    note: str | None = None  # one line for the user when the plan's kvm falls back to tcg


def probe_is_current(cached: Mapping[str, Any] | None, ref: str) -> bool:
    """Whether the host's recorded facts were gathered on this very host (same provider ref)."""
    return bool(cached) and cached.get("ref") == ref and isinstance(cached.get("kvm"), Mapping)


def choose_accel(planned: Accel, facts: Mapping[str, Any] | None) -> AccelChoice:
    """``kvm`` when the host's probe ran a vCPU at hardware speed, else ``tcg`` (with a note when
    the plan counted on kvm). Without facts, the safe choice: ``tcg``."""
    kvm = (facts or {}).get("kvm") or {}
    if kvm.get("works") is True:
        return AccelChoice("kvm")
    if planned != "kvm":
        return AccelChoice("tcg")
    why = str(kvm.get("detail") or "the host's KVM probe did not run")
    return AccelChoice("tcg", f"planned for kvm, but KVM does not work there ({why}); its VMs use tcg")
