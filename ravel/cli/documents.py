"""The documents `--json` prints: one per command, built here from what the library returned,
written once at the end on stdout (progress and warnings go to stderr). Their shapes are
documented in docs/json.md and pinned by the JSON Schemas in docs/schemas/, which the tests
validate real output against; a field may be added, never renamed or removed."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # annotations only: `ravel cp --json` need not load the publish pipeline
    from ..ci.pipeline import RunResult
    from ..plan.plan import Plan
    from ..run.lab import PublishResult, VmStatus


def write(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


def vms(statuses: Iterable[VmStatus]) -> list[dict[str, Any]]:
    return [asdict(v) for v in statuses]


def published(result: PublishResult, provider: str, snapshot: str | None = None) -> dict[str, Any]:
    return {
        "app": result.app,
        "provider": provider,
        "from_snapshot": snapshot,
        "changed": result.changed,  # actions the hosts performed; 0: everything was up to date
        "ready_s": result.ready_s,
        "plan": plan(result.plan),
        "vms": vms(result.vms),
    }


def plan(p: Plan) -> dict[str, Any]:
    return p.to_dict()


def running(app: str, action: str, targets: list[str], changed: int,
            statuses: Iterable[VmStatus]) -> dict[str, Any]:
    """`ravel stop` / `ravel start`."""
    return {"app": app, "action": action, "targets": targets, "changed": changed, "vms": vms(statuses)}


def nics(app: str, states: Iterable[Any], changed: int | None) -> dict[str, Any]:
    """`ravel netem`, `ravel link`: the NICs as they are now; `changed` None for a listing."""
    return {"app": app, "changed": changed, "nics": [n.to_dict() for n in states]}


def destroyed(app: str, hosts_removed: int) -> dict[str, Any]:
    return {"app": app, "destroyed": True, "hosts_removed": hosts_removed}


def ran(result: RunResult, publish_line: str | None) -> dict[str, Any]:
    """`ravel run`: `status` is its exit status (COMMAND's own, or ravel's when ravel failed:
    then `messages` says what failed)."""
    return {"app": result.app, "status": result.status,
            "phases": [asdict(p) for p in result.phases],
            "snapshot": result.snapshot, "publish_from": publish_line, "kept": result.kept,
            "signal": result.signal, "messages": list(result.messages)}
