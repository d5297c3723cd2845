"""Fault injection, for tests only: `RAVEL_FAULT=STEP:N` ends this process abruptly the N-th
time it reaches the named step, as SIGKILL or a power cut would (no clean-up, no `finally`,
no flush), so a test can prove that every step of a command is safe to be interrupted at.

Unset (always, outside tests), `point()` is one global read and a comparison. The steps are
listed in `STEPS`; `point()` refuses a name that is not there, so a test cannot ask for a step
that no longer exists and pass without ever crashing. docs/architecture.md lists them too.
"""

from __future__ import annotations

import os
import sys
import threading

EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL (128 + 9)

STEPS = (
    # publish (a blueprint, or a snapshot after restore.* below)
    "publish.locked",  # the app lock is held, nothing recorded yet
    "publish.recorded",  # the app is in the state ("publishing"), no host exists yet
    "provision.made",  # a host exists on the provider, not yet recorded in the state (per host)
    "provision.recorded",  # a host is recorded, not yet reached (per host)
    "publish.reached",  # every host answers, nothing applied
    "publish.applied",  # a host has applied its desired state, not yet recorded (per host)
    "publish.exposed",  # every host applied and recorded, services exposed, VMs not recorded
    "publish.vms",  # VMs recorded, the app still "publishing"
    "publish.done",  # the app is "running", its state backup not yet written
    # destroy
    "destroy.locked",  # the lock is held, nothing removed
    "destroy.marked",  # the app is "destroying", nothing removed yet
    "destroy.host",  # a host is removed (per host)
    "destroy.files",  # every host is gone; the app's run, data and key files are removed
    "destroy.forgotten",  # the app is gone from the state; its lock file is still there
    # snapshot
    "snapshot.pending",  # the store's in-progress marker is written, no VM paused
    "snapshot.frozen",  # every VM paused, frozen and resumed; no layer uploaded
    "snapshot.uploaded",  # every layer is in the store; no manifest yet
    "snapshot.committed",  # the manifest is written
    # publish --from: before the publish steps above
    "restore.fetching",  # a layer is being written to the image cache under a temporary name
    "restore.fetched",  # every layer is fetched and verified; the app's blueprint not written yet
)

_wanted: tuple[str, int] | None = None
_hits: dict[str, int] = {}
_lock = threading.Lock()


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    step, _, n = value.partition(":")
    if step not in STEPS:
        sys.stderr.write(f"RAVEL_FAULT: unknown step {step!r} (steps: {', '.join(STEPS)})\n")
        os._exit(2)
    return step, int(n) if n.isdigit() and int(n) > 0 else 1


_wanted = _parse(os.environ.get("RAVEL_FAULT"))


def point(step: str) -> None:
    """A step a command may be interrupted at: with RAVEL_FAULT=STEP:N, the N-th arrival here
    ends the process at once (exit 137). Cheap when unset."""
    if _wanted is None:
        return
    assert step in STEPS, step
    if _wanted[0] != step:
        return
    with _lock:
        _hits[step] = _hits.get(step, 0) + 1
        if _hits[step] == _wanted[1]:
            sys.stderr.write(f"RAVEL_FAULT: crashed at {step}:{_wanted[1]}\n")
            sys.stderr.flush()
            os._exit(EXIT_CODE)
