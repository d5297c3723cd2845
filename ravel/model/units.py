"""Sizes as users write them: `512MiB`, `4GiB`, `1.5G`, or a plain integer meaning MiB."""

from __future__ import annotations

import functools
import re

# Binary multiples throughout: VMware and most lab tooling mean GiB when they write GB, and a
# lab sized in decimal units would silently get less memory than asked for. Each unit is spelt
# as written here or all in lowercase; mixed spellings such as `Gib` (gibibits) are refused.
UNITS_MIB: dict[str, float] = {}
for _prefix, _mib in (("K", 1 / 1024), ("M", 1), ("G", 1024), ("T", 1024 * 1024)):
    for _unit in (_prefix, _prefix + "B", _prefix + "iB"):
        UNITS_MIB[_unit] = UNITS_MIB[_unit.lower()] = _mib
MAX_MIB = 1024 * 1024 * 1024  # 1 EiB: anything larger is a typo, not a lab
_NUMBER = r"\d{1,16}(?:\.\d{1,16})?"  # more digits than a double holds is a typo, not a size
_UNIT = "|".join(sorted(UNITS_MIB, key=lambda u: (-len(u), u)))
# the JSON Schema's pattern for sizes written as text (spec.py): the same grammar as parse_mib
SIZE_PATTERN = rf"^\s*{_NUMBER}\s*(?:{_UNIT})?\s*$"
_SIZE = re.compile(rf"^\s*(-?{_NUMBER})\s*({_UNIT})?\s*$")
_LOOSE = re.compile(r"^\s*-?[\d.]+\s*([A-Za-z]*)\s*$")


def parse_mib(value: object) -> int:
    """Return a whole, positive number of MiB, or raise ValueError with a message for users."""
    if value.__class__ is str and len(value) <= 32:  # type: ignore[union-attr]
        return _parse_text(value)  # type: ignore[arg-type]
    return _parse(value)


@functools.lru_cache(maxsize=1024)
def _parse_text(value: str) -> int:
    # sizes repeat across VMs (`1GiB` a thousand times): each distinct text is read once
    return _parse(value)


def _parse(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB or 4GiB, got a boolean")
    if isinstance(value, int):
        mib: float = value
    elif isinstance(value, float):
        raise ValueError(f"expected a size with a unit such as 512MiB or 4GiB, got {value!r}")
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            loose = _LOOSE.match(value)
            if loose and loose.group(1) and loose.group(1) not in UNITS_MIB:
                raise ValueError(f"unknown unit {loose.group(1)!r} in {value!r}; use MiB, GiB or TiB")
            if loose and len(value) > 20:
                raise ValueError(f"{value[:20]!r}... is too large")
            raise ValueError(f"{value!r} is not a size; write e.g. 512MiB, 4GiB or 2048")
        mib = float(m.group(1)) * UNITS_MIB[m.group(2) or "M"]
    else:
        what = "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else "nothing (null)" \
            if value is None else "a value of another kind"
        raise ValueError(f"expected a size such as 512MiB or 4GiB, got {what}")
    if mib <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    if mib != int(mib):
        raise ValueError(f"{value!r} is not a whole number of MiB")
    if mib > MAX_MIB:
        raise ValueError(f"{value!r} is too large")
    return int(mib)


def format_mib(mib: int) -> str:
    if mib % 1024 == 0:
        return f"{mib // 1024}GiB"
    return f"{mib}MiB"
