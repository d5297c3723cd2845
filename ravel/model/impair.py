"""Link impairment as users write it (`delay: 50ms`, `loss: 1%`, `rate: 10mbit`): parsed into
whole numbers the host's `tc` takes. One parser for the blueprint (`nics[].impair`) and the
command line (`ravel netem`), so both accept and refuse exactly the same text."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

_TIME_US = {"us": 1, "ms": 1000, "s": 1_000_000}
_RATE_KBIT = {"kbit": 1, "mbit": 1000, "gbit": 1_000_000}
_NUMBER = r"(\d+(?:\.\d+)?)"
MAX_DELAY_US = 60_000_000  # a minute: beyond it the guests' own timeouts fire first
MAX_RATE_KBIT = 100_000_000  # 100 gbit
MIN_RATE_KBIT = 8  # below it tbf cannot pass one full-size frame in a reasonable burst
TIME_PATTERN = rf"^\s*{_NUMBER}\s*(us|ms|s)\s*$"
PERCENT_PATTERN = rf"^\s*{_NUMBER}\s*%\s*$"
RATE_PATTERN = rf"^\s*{_NUMBER}\s*(kbit|mbit|gbit)\s*$"


@dataclass(frozen=True)
class Impair:
    """What a NIC's link does to its frames (docs/netem.md): zero means "not set"."""

    delay_us: int = 0
    jitter_us: int = 0
    loss: float = 0.0  # percent
    corrupt: float = 0.0
    duplicate: float = 0.0
    rate_kbit: int = 0

    def __bool__(self) -> bool:
        return any(asdict(self).values())

    def to_doc(self) -> dict[str, Any]:
        """The set values only (the host's desired document and `--json` use this shape)."""
        return {k: v for k, v in asdict(self).items() if v}

    def words(self) -> str:
        """`delay 50ms jitter 5ms loss 1% rate 10mbit`, or `none`."""
        parts = []
        if self.delay_us:
            parts.append(f"delay {format_time(self.delay_us)}")
        if self.jitter_us:
            parts.append(f"jitter {format_time(self.jitter_us)}")
        for key in ("loss", "corrupt", "duplicate"):
            value = getattr(self, key)
            if value:
                parts.append(f"{key} {value:g}%")
        if self.rate_kbit:
            parts.append(f"rate {format_rate(self.rate_kbit)}")
        return " ".join(parts) or "none"


def from_doc(doc: dict[str, Any] | None) -> Impair:
    doc = doc or {}
    return Impair(int(doc.get("delay_us", 0)), int(doc.get("jitter_us", 0)), float(doc.get("loss", 0)),
                  float(doc.get("corrupt", 0)), float(doc.get("duplicate", 0)), int(doc.get("rate_kbit", 0)))


def parse_time(value: object) -> int:
    """`50ms`, `200us`, `1.5s` -> microseconds (0 allowed: not set)."""
    m = re.match(TIME_PATTERN, value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"{value!r} is not a time; write e.g. 50ms, 200us or 1s")
    us = int(round(float(m.group(1)) * _TIME_US[m.group(2)]))
    if us > MAX_DELAY_US:
        raise ValueError(f"{value!r} is more than a minute")
    return us


def parse_percent(value: object) -> float:
    """`1%`, `0.1%` (or a bare number of percent) -> percent, 0..100."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        pct = float(value)
    else:
        m = re.match(PERCENT_PATTERN, value) if isinstance(value, str) else None
        if not m:
            raise ValueError(f"{value!r} is not a percentage; write e.g. 1% or 0.5%")
        pct = float(m.group(1))
    if not 0 <= pct <= 100:
        raise ValueError(f"{value!r} is not between 0% and 100%")
    return round(pct, 4)


def parse_rate(value: object) -> int:
    """`10mbit`, `512kbit`, `1gbit` -> kbit/s. Bytes per second (tc's `kbps`, `mbps`) are
    refused rather than guessed: they differ by a factor of eight."""
    m = re.match(RATE_PATTERN, value.lower()) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"{value!r} is not a rate in bits per second; write e.g. 10mbit, 512kbit or 1gbit")
    kbit = int(round(float(m.group(1)) * _RATE_KBIT[m.group(2)]))
    if not MIN_RATE_KBIT <= kbit <= MAX_RATE_KBIT:
        raise ValueError(f"{value!r} is outside {MIN_RATE_KBIT}kbit..100gbit")
    return kbit


def impair_from(delay: object = None, jitter: object = None, loss: object = None, corrupt: object = None,
                duplicate: object = None, rate: object = None) -> Impair:
    """The values as written (None: not set); ValueError naming the first bad one."""
    def field(name: str, value: object, parse: Any) -> Any:
        if value is None:
            return 0
        try:
            return parse(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    out = Impair(field("delay", delay, parse_time), field("jitter", jitter, parse_time),
                 field("loss", loss, parse_percent), field("corrupt", corrupt, parse_percent),
                 field("duplicate", duplicate, parse_percent), field("rate", rate, parse_rate))
    if out.jitter_us and not out.delay_us:
        raise ValueError("jitter: needs a delay (the delay varies by up to the jitter either way)")
    if out.jitter_us > out.delay_us:
        raise ValueError(f"jitter: {format_time(out.jitter_us)} is more than the delay "
                         f"{format_time(out.delay_us)}")
    return out


def format_time(us: int) -> str:
    if us % 1_000_000 == 0:
        return f"{us // 1_000_000}s"
    if us % 1000 == 0:
        return f"{us // 1000}ms"
    return f"{us}us"


def format_rate(kbit: int) -> str:
    if kbit % 1_000_000 == 0:
        return f"{kbit // 1_000_000}gbit"
    if kbit % 1000 == 0:
        return f"{kbit // 1000}mbit"
    return f"{kbit}kbit"


def effective(blueprint: Impair | None, live: dict[str, Any] | None) -> Impair:
    """A NIC's impairment now: what `ravel netem` set (`live["impair"]`, {} once cleared) wins
    over the blueprint's until `ravel netem --reset`."""
    if live and live.get("impair") is not None:
        return from_doc(live["impair"])
    return blueprint or Impair()
