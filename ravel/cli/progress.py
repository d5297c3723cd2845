"""Progress lines for long operations, on stderr so stdout stays clean for tables and JSON."""

from __future__ import annotations

import time

from rich.console import Console

from ..events import Emit, Event


def printer(console: Console) -> Emit:
    start = time.monotonic()

    def emit(ev: Event) -> None:
        console.print(f"[{time.monotonic() - start:5.1f}s] {ev.stage:<7} {ev.message}", markup=False)

    return emit
