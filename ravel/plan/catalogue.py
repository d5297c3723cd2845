"""Host-type catalogues: what each provider can rent, how big it is and what it costs per hour.

The data lives in ``ravel/plan/catalogues/<provider>.json`` so prices can be refreshed without
touching code; this module only loads and checks it. Pure apart from reading package data.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, NoReturn

from ravel.errors import PlacementError
from ravel.plan.reserve import CLOUD_HOST, NAMESPACE_HOST, Reserve

_TOP_KEYS = ("provider", "region", "currency", "source", "as_of", "note", "host_types")


@dataclass(frozen=True)
class HostType:
    name: str
    cpus: int
    memory_mib: int
    hourly_cost: float
    # Hardware virtualization reaches the guests (AWS 8i with NestedVirtualization, *.metal,
    # GCP n2/c3): QEMU uses KVM there, TCG everywhere else.
    nested_virt: bool
    family: str = ""

    @property
    def accel(self) -> str:
        return "kvm" if self.nested_virt else "tcg"


@dataclass(frozen=True)
class Machine:
    """The machine local hosts are carved from, as read at plan time (ravel/run/capacity.py)."""

    cores: int
    memory_mib: int

    def to_dict(self) -> dict[str, int]:
        return {"cores": self.cores, "memory_mib": self.memory_mib}


@dataclass(frozen=True)
class Catalogue:
    provider: str
    region: str
    currency: str
    source: str
    as_of: str
    note: str
    host_types: tuple[HostType, ...]
    # what every host keeps for itself: a whole OS on a cloud instance, a namespace locally
    reserve: Reserve = CLOUD_HOST
    machine: Machine | None = None  # local types derived from this machine (plan/local_types.py)
    nested_virt_source: str = ""

    def reserve_mib(self, host_type: HostType) -> int:
        return self.reserve.memory_mib(host_type.memory_mib)

    def names(self) -> list[str]:
        return [t.name for t in self.host_types]

    def get(self, name: str) -> HostType:
        for host_type in self.host_types:
            if host_type.name == name:
                return host_type
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        suggestion = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise PlacementError(
            f"unknown host type {name!r} for provider {self.provider}{suggestion}",
            dimension="host_type",
            nearest=close[0] if close else None,
            hint=f"{self.provider} host types: {', '.join(self.names())}",
        )


def _data_dir() -> Traversable:
    # "catalogues" is a data folder, not a package: reach it through its parent package
    return resources.files("ravel.plan").joinpath("catalogues")


def providers() -> list[str]:
    files = _data_dir().iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


@functools.cache  # a Catalogue is immutable, so one parse per provider serves everyone
def load_catalogue(provider: str) -> Catalogue:
    known = providers()
    if provider not in known:
        raise PlacementError(
            f"unknown provider {provider!r}; known providers: {', '.join(known)}",
            dimension="provider",
            nearest=(difflib.get_close_matches(provider, known, n=1) or [None])[0],
        )
    text = _data_dir().joinpath(f"{provider}.json").read_text(encoding="utf-8")
    return catalogue_from_dict(json.loads(text), origin=f"{provider}.json")


def catalogue_from_dict(data: dict[str, Any], origin: str = "catalogue") -> Catalogue:
    """Build a Catalogue from its JSON form, refusing anything the planner could trip over."""
    missing = [k for k in _TOP_KEYS if k not in data]
    if missing:
        _malformed(origin, f"missing keys {', '.join(missing)}")
    for key in _TOP_KEYS[:-1]:
        if not isinstance(data[key], str) or not data[key].strip():
            _malformed(origin, f"{key} must be a non-empty string")
    entries = data["host_types"]
    if not isinstance(entries, list) or not entries:
        _malformed(origin, "host_types must be a non-empty list")
    types = tuple(_host_type(entry, origin, i) for i, entry in enumerate(entries))
    seen: set[str] = set()
    for host_type in types:
        if host_type.name in seen:
            _malformed(origin, f"host type {host_type.name} appears twice")
        seen.add(host_type.name)
    source = data.get("nested_virt_source", "")
    if not isinstance(source, str):
        _malformed(origin, "nested_virt_source must be a string")
    return Catalogue(
        provider=data["provider"],
        region=data["region"],
        currency=data["currency"],
        source=data["source"],
        as_of=data["as_of"],
        note=data["note"],
        host_types=types,
        reserve=NAMESPACE_HOST if data["provider"] == "local" else CLOUD_HOST,
        nested_virt_source=source,
    )


def _host_type(entry: Any, origin: str, index: int) -> HostType:
    where = f"host_types[{index}]"
    if not isinstance(entry, dict):
        _malformed(origin, f"{where} must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        _malformed(origin, f"{where}.name must be a non-empty string")
    for key in ("cpus", "memory_mib"):
        value = entry.get(key)
        # bool is an int subclass; a stray `true` must not read as 1 vCPU
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            _malformed(origin, f"{name}: {key} must be a positive integer")
    cost = entry.get("hourly_cost")
    if not isinstance(cost, (int, float)) or isinstance(cost, bool) or not math.isfinite(cost):
        _malformed(origin, f"{name}: hourly_cost must be a number")
    if cost <= 0:
        _malformed(origin, f"{name}: hourly_cost must be positive")
    if not isinstance(entry.get("nested_virt"), bool):
        _malformed(origin, f"{name}: nested_virt must be true or false")
    family = entry.get("family", "")
    if not isinstance(family, str):
        _malformed(origin, f"{name}: family must be a string")
    return HostType(
        name=name,
        cpus=entry["cpus"],
        memory_mib=entry["memory_mib"],
        hourly_cost=float(cost),
        nested_virt=entry["nested_virt"],
        family=family,
    )


def _malformed(origin: str, what: str) -> NoReturn:
    raise PlacementError(f"host catalogue {origin} is malformed: {what}", dimension="catalogue")
