"""Sizes as users write them: `512MiB`, `4GiB`, `1.5G`, or a plain integer meaning MiB."""

from __future__ import annotations

import re

# Binary multiples throughout: VMware and most lab tooling mean GiB when they write GB, and a
# lab sized in decimal units would silently get less memory than asked for.
_UNITS_MIB = {
    "k": 1 / 1024, "kb": 1 / 1024, "kib": 1 / 1024,
    "m": 1, "mb": 1, "mib": 1,
    "g": 1024, "gb": 1024, "gib": 1024,
    "t": 1024 * 1024, "tb": 1024 * 1024, "tib": 1024 * 1024,
}
_SIZE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
MAX_MIB = 1024 * 1024 * 1024  # 1 EiB: anything larger is a typo, not a lab


def parse_mib(value: object) -> int:
    """Return a whole, positive number of MiB, or raise ValueError with a message for users."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB or 4GiB, got a boolean")
    if isinstance(value, int):
        mib: float = value
    elif isinstance(value, float):
        raise ValueError(f"expected a size with a unit such as 512MiB or 4GiB, got {value!r}")
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size; write e.g. 512MiB, 4GiB or 2048")
        number, unit = m.group(1), m.group(2).lower()
        if unit and unit not in _UNITS_MIB:
            raise ValueError(f"unknown unit {m.group(2)!r} in {value!r}; use MiB, GiB or TiB")
        mib = float(number) * _UNITS_MIB[unit or "m"]
    else:
        raise ValueError(f"expected a size such as 512MiB or 4GiB, got {type(value).__name__}")
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
