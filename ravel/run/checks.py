"""One line of `ravel doctor`: what was checked, whether it is fine, whether ravel needs it, and
the command that fixes it. `report` is the `--json` document (docs/json.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    required: bool  # a failure here stops the local provider from working (exit 9)
    detail: str
    fix: str = ""  # how to make it ok; only meaningful when it is not

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report(checks: list[Check]) -> dict[str, Any]:
    """Every check, and `ok`: everything required is there (optional failures are warnings)."""
    return {"checks": [c.to_dict() for c in checks],
            "ok": all(c.ok for c in checks if c.required)}


def missing(checks: list[Check]) -> list[Check]:
    """The required checks that failed."""
    return [c for c in checks if c.required and not c.ok]
