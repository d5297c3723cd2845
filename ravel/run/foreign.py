"""What an app the state does not know left behind: hosts the provider still has for its name
(namespaces `rv-APP-HOST` on this set-up's underlay locally, tagged instances on clouds), its
disks and run files.

A publish of a new app never takes such things over without a word: they belong to an app
this state lost (a damaged or emptied database) or to another set-up, and their VMs may still
be running. `ravel doctor --repair-state` takes them back into the state; `ravel destroy APP
--force` removes them.
"""

from __future__ import annotations

from ..errors import StateError
from ..providers.base import HostFinder, Provider
from .sessions import Context


def found(ctx: Context, app: str, provider: Provider) -> list[str]:
    """One phrase per kind of thing found, e.g. "hosts host-1, host-2 (local)"; [] when none."""
    out = []
    if isinstance(provider, HostFinder):
        # hosts of this set-up only: a bare namespace of that name is no app's (and is adopted)
        hosts = sorted(h.name for h in provider.found_hosts(app))
    else:
        hosts = provider.leftover_hosts(app)
    if hosts:
        out.append(f"host{'s' if len(hosts) > 1 else ''} {', '.join(hosts)} ({provider.name})")
    for what, where in (("disks", ctx.paths.app_data(app)), ("run files", ctx.paths.app_run(app))):
        if where.exists():
            out.append(f"{what} in {where}")
    return out


def refuse(ctx: Context, app: str, provider: Provider) -> None:
    what = found(ctx, app, provider)
    if what:
        raise StateError(f"app {app!r} is not in the state, but an app of that name left {'; '.join(what)}: "
                         "publishing would take them over",
                         hint=f"`ravel doctor --repair-state` takes them back into the state; "
                              f"`ravel destroy {app} --force` removes them")
