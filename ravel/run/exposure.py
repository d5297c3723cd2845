"""Exposed services (`services:` on a VM) between the plan and a provider that can expose them.

What is exposed is kept with each VM in the state (its detail's "services"), so a re-publish
keeps every port a user was shown, and destroy ends exactly what was started.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

from ..plan.app import AppPlan
from ..providers.base import Exposure, Host, Provider, ServiceExposer
from ..state import State
from ..events import Emit, Event, quiet


def recorded(state: State, app: str) -> list[Exposure]:
    out = []
    for v in state.vms(app):
        for d in v.detail.get("services") or ():
            try:
                out.append(Exposure(**d))
            except TypeError:
                continue  # written by another version: nothing we could end safely
    return out


def expose(state: State, app: str, provider: Provider, hosts: Mapping[str, Host], ap: AppPlan,
           emit: Emit = quiet) -> dict[str, list[dict[str, Any]]]:
    """VM name -> its exposures, as stored in the VM's detail."""
    forwards = ap.forwards
    current = recorded(state, app)
    if not isinstance(provider, ServiceExposer):
        if forwards:
            emit(Event("services", f"the {provider.name} provider cannot expose services yet: "
                                   f"{len(forwards)} not exposed", done=True))
        return {}
    exposed = provider.expose(app, hosts, forwards, current)
    out: dict[str, list[dict[str, Any]]] = {}
    for e in exposed:
        out.setdefault(e.vm, []).append(asdict(e))
    return out


def unexpose(state: State, app: str, provider: Provider) -> None:
    if isinstance(provider, ServiceExposer):
        provider.unexpose(app, recorded(state, app))


def labels(detail: Mapping[str, Any]) -> list[str]:
    """How `ravel status` shows a VM's exposed services: 127.0.0.1:40123->80/tcp."""
    out = []
    for d in detail.get("services") or ():
        try:
            out.append(Exposure(**d).label())
        except TypeError:
            continue
    return out
