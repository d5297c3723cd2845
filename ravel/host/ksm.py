"""KSM (kernel same-page merging) for hosts that run several guests of one base image: the
kernel merges their identical pages (QEMU marks guest RAM mergeable), what HVX called
consolidation. Standard library only; runs on the host.

KSM is one switch per kernel, and namespace hosts share this machine's kernel, so hosts keep a
marker each in MARKS while they want it: the first to turn KSM on notes that it was off, and
the last marker to go turns it back off. KSM that was on before ravel stays on.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Optional

RUN = "/sys/kernel/mm/ksm/run"
MARKS = "/run/ravel-ksm"
WAS_OFF = "was-off"  # in MARKS: ravel turned KSM on, and turns it off with the last marker


@dataclass(frozen=True)
class KsmFacts:
    run: Optional[str]  # "0", "1", "2" (unmerge); None: this kernel has no KSM
    marked: bool  # this run_dir keeps a marker


def _marker(run_dir: str) -> str:
    return os.path.join(MARKS, hashlib.sha256(run_dir.encode()).hexdigest()[:16])


def gather(run_dir: str) -> KsmFacts:
    try:
        with open(RUN) as f:
            run: Optional[str] = f.read().strip()
    except OSError:
        run = None
    return KsmFacts(run, os.path.exists(_marker(run_dir)))


def turn_on(run_dir: str) -> str:
    os.makedirs(MARKS, mode=0o700, exist_ok=True)
    with open(RUN) as f:
        was = f.read().strip()
    if was != "1":
        if not os.path.exists(os.path.join(MARKS, WAS_OFF)):
            with open(os.path.join(MARKS, WAS_OFF), "w") as f:
                f.write(was)
        with open(RUN, "w") as f:
            f.write("1")
    with open(_marker(run_dir), "w") as f:
        f.write(run_dir)
    return "on" if was != "1" else "already on"


def release(run_dir: str) -> str:
    try:
        os.unlink(_marker(run_dir))
    except FileNotFoundError:
        pass
    left = [n for n in _list(MARKS) if n != WAS_OFF]
    was_off = os.path.join(MARKS, WAS_OFF)
    if left or not os.path.exists(was_off):
        return "left on" if left else "left as it was before ravel"
    with open(was_off) as f:
        before = f.read().strip() or "0"
    with open(RUN, "w") as f:
        f.write(before)
    os.unlink(was_off)
    return f"back to {before}"


def _list(path: str) -> list:
    try:
        return os.listdir(path)
    except OSError:
        return []
