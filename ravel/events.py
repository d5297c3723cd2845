"""Typed progress events the pipelines emit; the CLI decides how they look."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Event:
    stage: str  # plan, hosts, network, vms, wait, destroy...
    message: str
    host: str | None = None
    vm: str | None = None
    done: bool = False


Emit = Callable[[Event], None]


def quiet(_: Event) -> None:
    return None
