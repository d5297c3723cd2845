"""Durations as users write them: `20s`, `90m`, `2h`, `1d`, `1h30m`, or a plain integer of
seconds. Lifetimes (`--ttl`, `lifetime.ttl`) and `ravel run --timeout`-like bounds use it."""

from __future__ import annotations

import re

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
MAX_S = 366 * 86400  # a year and a day: anything longer is a typo, not a lab


def parse_duration(value: object) -> int:
    """Whole, positive seconds, or ValueError with a message for users."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30m or 2h, got a boolean")
    if isinstance(value, int):
        seconds: float = value
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text.isdigit():
            seconds = int(text)
        else:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"{value!r} is not a duration; write e.g. 20s, 90m, 2h, 1d or 1h30m")
            seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    else:
        raise ValueError(f"expected a duration such as 30m or 2h, got {type(value).__name__}")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    if seconds > MAX_S:
        raise ValueError(f"{value!r} is longer than a year")
    return int(round(seconds))


def format_duration(seconds: float) -> str:
    """`2h`, `1h30m`, `45s`: the shortest exact spelling (rounded to whole seconds)."""
    s = int(round(seconds))
    if s <= 0:
        return "0s"
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out += f"{s // size}{unit}"
            s %= size
    return out


def approx_duration(seconds: float) -> str:
    """`2h 5m`, `40s`: at most two units, for status lines."""
    s = int(round(abs(seconds)))
    for unit, size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            rest = (s % size) // small_size
            return f"{s // size}{unit}" + (f" {rest}{small}" if rest else "")
    return f"{s}s"
