"""Removing hosts: those a new plan no longer needs, and every host of an app on destroy."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

from .. import keys
from ..errors import RavelError, StateError
from ..providers import get_provider
from ..providers.base import Host, Provider
from . import exposure
from .events import Event
from .fanout import parallel

if TYPE_CHECKING:
    from .lab import Lab

DESTROY_REACH_S = 30.0  # destroy: after this, the provider removes the host without its help


def retire_hosts(lab: Lab, app: str, provider: Provider, keep: set[str]) -> int:
    gone = [r for r in lab.state.hosts(app) if r.name not in keep]
    for r in gone:
        destroy_host(lab, app, provider, r.name, r.host_id, r.extra.get("desired"), r.ref, r.address,
                           r.extra.get("host"))
        lab.state.delete_host(app, r.name)
        lab.emit(Event("hosts", f"{r.name} removed (no longer in the plan)", host=r.name, done=True))
    return len(gone)


def destroy_host(lab: Lab, app: str, provider: Provider, name: str, host_id: int,
                 desired: dict[str, Any] | None, ref: str | None, address: str | None,
                 extra: dict[str, Any] | None = None) -> None:
    if desired is not None and ref:
        # the runtime stops QEMU through QMP and removes its files; the provider's delete
        # below removes whatever the runtime could not reach
        try:
            host = Host(app, name, ref, address or "", desired["underlay"]["device"], desired["run_dir"],
                        extra or {})
            lab._runtime(provider, host, reach_s=DESTROY_REACH_S).destroy(desired)
        except RavelError:
            pass
    lab._runtimes.pop((app, name), None)
    t = lab._transports.pop((app, name), None)
    if t is not None:
        t.close()
    provider.delete_host(app, name, host_id)


def destroy(lab: Lab, app: str, provider_name: str | None = None) -> int:
    rec = lab.state.app(app)
    provider = get_provider(rec.provider if rec else (provider_name or "local"), lab.paths)
    with lab.state.lock(app, "destroy"):
        hosts = {r.name: r for r in lab.state.hosts(app)}
        leftovers = [h for h in provider.leftover_hosts(app) if h not in hosts]
        if rec is None and not hosts and not leftovers and not lab.paths.app_data(app).exists():
            known = ", ".join(a.name for a in lab.state.apps()) or "none"
            raise StateError(f"no app named {app!r} (apps: {known})")

        def remove(name: str) -> None:
            r = hosts.get(name)
            if r is not None:
                destroy_host(lab, app, provider, name, r.host_id, r.extra.get("desired"), r.ref, r.address,
                                   r.extra.get("host"))
            else:
                provider.delete_host(app, name, 0)
            lab.emit(Event("destroy", f"{name} removed", host=name, done=True))

        exposure.unexpose(lab.state, app, provider)  # before the hosts their relays lead into
        parallel(remove, list(hosts) + leftovers)
        shutil.rmtree(lab.paths.app_run(app), ignore_errors=True)
        shutil.rmtree(lab.paths.app_data(app), ignore_errors=True)
        shutil.rmtree(keys.directory(lab.paths.state) / "hostkeys" / app, ignore_errors=True)
        lab.state.delete_app(app)
        provider.cleanup()
    try:
        (lab.state.dir / "locks" / f"{app}.lock").unlink()
    except FileNotFoundError:
        pass
    return len(hosts) + len(leftovers)

