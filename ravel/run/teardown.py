"""Removing hosts: those a new plan no longer needs, and every host of an app on destroy."""

from __future__ import annotations

import shutil
from .. import faults, keys
from ..errors import RavelError, StateDamaged, StateError
from ..providers import get_provider
from ..providers.base import Provider, ServiceExposer
from ..state import HostRecord
from . import exposure, lifetime, state_backup
from ..events import Event
from .fanout import parallel

from .sessions import Context, applied_desired, recorded_host

DESTROY_REACH_S = 30.0  # destroy: after this, the provider removes the host without its help


def retire_hosts(ctx: Context, app: str, provider: Provider, keep: set[str]) -> int:
    gone = [r for r in ctx.state.hosts(app) if r.name not in keep]
    for r in gone:
        destroy_host(ctx, app, provider, r)
        ctx.state.delete_host(app, r.name)
        ctx.emit(Event("hosts", f"{r.name} removed (no longer in the plan)", host=r.name, done=True))
    return len(gone)


def destroy_host(ctx: Context, app: str, provider: Provider, rec: HostRecord) -> None:
    desired = applied_desired(rec)
    if desired is not None and rec.ref:
        # the runtime stops QEMU through QMP and removes its files; the provider's delete
        # below removes whatever the runtime could not reach
        try:
            host = recorded_host(app, rec, desired)
            ctx.hosts.runtime(provider, host, reach_s=DESTROY_REACH_S).destroy(desired)
        except RavelError:
            pass
    ctx.hosts.drop(app, rec.name)
    provider.delete_host(app, rec.name, rec.host_id)


def _forget_access_files(ctx: Context, app: str) -> None:
    """The app's pinned guest keys, ssh-config and inventory (access/, ravel run) go with it."""
    for folder in ("known_guests", "ssh_config", "inventory"):
        try:
            (ctx.paths.state / folder / app).unlink()
        except FileNotFoundError:
            pass


def forget_app(ctx: Context, app: str) -> None:
    """Drop what this machine keeps of an app whose hosts are gone without ravel (a cloud app
    whose hosts ended themselves at its expiry): its files, keys and state records."""
    with ctx.state.lock(app, "forget"):
        shutil.rmtree(ctx.paths.app_run(app), ignore_errors=True)
        shutil.rmtree(ctx.paths.app_data(app), ignore_errors=True)
        shutil.rmtree(keys.directory(ctx.paths.state) / "hostkeys" / app, ignore_errors=True)
        shutil.rmtree(keys.directory(ctx.paths.state) / "guestkeys" / app, ignore_errors=True)
        _forget_access_files(ctx, app)
        state_backup.remove(ctx.state, app)  # before its rows: a backup without rows means loss
        ctx.state.delete_app(app)
    try:
        (ctx.state.dir / "locks" / f"{app}.lock").unlink()
    except FileNotFoundError:
        pass


def destroy(ctx: Context, app: str, provider_name: str | None = None, force: bool = False) -> int:
    """Remove everything app `app` made: what the state records, and whatever the provider
    still has for its name. `force`: also when the state cannot be read (damaged): then what
    the hosts show is all there is to go by, on `provider_name` (default local)."""
    rec, readable = None, True
    try:
        rec = ctx.state.app(app)
    except StateDamaged:
        if not force:
            raise
        readable = False
    provider = get_provider(rec.provider if rec else (provider_name or "local"), ctx.paths)
    with ctx.state.lock(app, "destroy"):
        faults.point("destroy.locked")
        hosts = {r.name: r for r in ctx.state.hosts(app)} if readable else {}
        leftovers = [h for h in provider.leftover_hosts(app) if h not in hosts]
        if rec is None and not hosts and not leftovers and not ctx.paths.app_data(app).exists() \
                and not ctx.paths.app_run(app).exists():
            _drop_lock_file(ctx, app)
            if not readable:
                raise StateError(f"nothing of an app named {app!r} is left on {provider.name}")
            known = ", ".join(a.name for a in ctx.state.apps()) or "none"
            raise StateError(f"no app named {app!r} (apps: {known})")
        if rec is not None:
            ctx.state.set_app_status(app, "destroying")
        state_backup.remove(ctx.state, app)  # before its rows: a backup without rows means loss
        faults.point("destroy.marked")

        def remove(name: str) -> None:
            r = hosts.get(name)
            if r is not None:
                destroy_host(ctx, app, provider, r)
            else:
                provider.delete_host(app, name, 0)
            ctx.emit(Event("destroy", f"{name} removed", host=name, done=True))
            faults.point("destroy.host")

        # before the hosts their relays lead into; without a state, relays are found by their tag
        if readable:
            lifetime.stop_reaper(ctx.state, app)  # its work is done here (unless it is the one doing it)
            exposure.unexpose(ctx.state, app, provider)
        elif isinstance(provider, ServiceExposer):
            provider.unexpose(app, [])
        parallel(remove, list(hosts) + leftovers)
        shutil.rmtree(ctx.paths.app_run(app), ignore_errors=True)
        shutil.rmtree(ctx.paths.app_data(app), ignore_errors=True)
        shutil.rmtree(keys.directory(ctx.paths.state) / "hostkeys" / app, ignore_errors=True)
        shutil.rmtree(keys.directory(ctx.paths.state) / "guestkeys" / app, ignore_errors=True)
        _forget_access_files(ctx, app)
        provider.cleanup()  # the underlay once no app uses it; before the app is forgotten
        faults.point("destroy.files")
        if readable:
            ctx.state.delete_app(app)
        faults.point("destroy.forgotten")
    _drop_lock_file(ctx, app)
    return len(hosts) + len(leftovers)


def _drop_lock_file(ctx: Context, app: str) -> None:
    try:
        (ctx.state.dir / "locks" / f"{app}.lock").unlink()
    except FileNotFoundError:
        pass
