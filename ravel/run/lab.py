"""The Lab: one ravel set-up on this machine (its paths, state and host sessions), the facade
every command goes through. It holds no logic of its own: each method hands the shared Context
to a stage (publish.py, observe.py, vm_access.py, teardown.py, and ravel/snapshot for
snapshots), and the stages take everything they use as arguments.
"""

from __future__ import annotations

from typing import BinaryIO, Callable, Iterator

from ..events import Emit, quiet
from ..paths import Paths
from ..providers import get_provider
from ..snapshot.take import SnapshotResult, open_target, take_snapshot
from ..state import State
from ..model.impair import Impair
from . import capture as captures
from . import (doctor, dryrun, health, lifetime, machine, netem, observe, publish as pipeline, repair, state_backup,
               teardown, vm_access)
from . import nics as nic_info
from .checks import Check
from .doctor import StateCheck
from .health import AppHealth
from .lifetime import Expiry, LifetimeRequest
from .observe import VmStatus
from .provision import ProvisionOptions
from .publish import PublishResult
from .repair import Repair
from .sessions import Context, applied_hosts

__all__ = ["AppHealth", "Check", "Lab", "PublishResult", "Repair", "StateCheck", "VmStatus"]


class Lab:
    def __init__(self, paths: Paths, emit: Emit = quiet, check_lost: bool = True) -> None:
        """`check_lost=False`: work on a state that lost apps (repair, destroy --force)."""
        self.paths = paths
        self.emit = emit
        self.ctx = Context(paths, emit, check_lost)

    @property
    def state(self) -> State:
        return self.ctx.state

    def close(self) -> None:
        self.ctx.close()

    def publish(self, blueprint_path: str, name: str | None = None, provider_name: str = "local",
                wait: bool = False, timeout: float = 300.0, host_image: str | None = None,
                ssh_from: str | None = None, transport: str | None = None,
                lifetime: LifetimeRequest = LifetimeRequest()) -> PublishResult:
        return pipeline.publish(self.ctx, blueprint_path, name, provider_name, wait, timeout,
                                ProvisionOptions(host_image, ssh_from, transport), lifetime_request=lifetime)

    def dry_run(self, blueprint_path: str, name: str | None = None, provider_name: str = "local",
                transport: str | None = None, timeout: float = dryrun.OBSERVE_S) -> dryrun.DryRun:
        """What `publish` would change, touching nothing."""
        return dryrun.dry_run(self.ctx, blueprint_path, name, provider_name, transport, timeout)

    def publish_snapshot(self, snapshot: str, name: str | None = None, provider_name: str = "local",
                         store_url: str | None = None, wait: bool = False,
                         timeout: float = 300.0, transport: str | None = None,
                         host_image: str | None = None, ssh_from: str | None = None,
                         lifetime: LifetimeRequest = LifetimeRequest()) -> PublishResult:
        return pipeline.publish_snapshot(self.ctx, snapshot, name, provider_name, store_url, wait, timeout,
                                         ProvisionOptions(host_image, ssh_from, transport), lifetime_request=lifetime)

    def set_running(self, app: str, vms: list[str] | None, running: bool) -> int:
        return pipeline.set_running(self.ctx, app, vms, running)

    def wait_ready(self, app: str, timeout: float) -> float:
        return observe.wait_ready(self.ctx, app, timeout)

    def status(self, app: str) -> list[VmStatus]:
        return observe.status(self.ctx, app)

    def nics(self, app: str) -> list[nic_info.NicState]:
        """Every NIC of the app: impairment, link, host and tap (`ravel netem APP`)."""
        return nic_info.nic_states(self.ctx, app)

    def find_nics(self, app: str, target: str) -> list[nic_info.NicState]:
        return nic_info.resolve_nic(self.ctx, app, target, need_one=False)

    def set_impair(self, app: str, target: str, impair: Impair | None) -> tuple[nic_info.NicState, int]:
        """`ravel netem APP VM[:NIC] ...`: None goes back to the blueprint's."""
        return netem.set_impair(self.ctx, app, target, impair)

    def set_link(self, app: str, target: str, up: bool) -> tuple[nic_info.NicState, int]:
        return netem.set_link(self.ctx, app, target, up)

    def capture(self, app: str, target: str, out: BinaryIO, fmt: str = "pcapng", bpf: str | None = None,
                count: int | None = None, duration: float | None = None) -> int:
        return captures.capture(self.ctx, app, target, out, fmt, bpf, count, duration)

    def console(self, app: str, vm: str, on_attached: Callable[[], None] = lambda: None) -> None:
        vm_access.console(self.ctx, app, vm, on_attached)

    def console_output(self, app: str, vm: str, follow: bool = False,
                       poll_s: float = 0.5, max_s: float | None = None) -> Iterator[bytes]:
        return vm_access.console_output(self.ctx, app, vm, follow, poll_s, max_s)

    def extend(self, app: str, ttl_s: int) -> Expiry:
        """The app now expires `ttl_s` from now (run/lifetime.py)."""
        rec = self.state.require_app(app)
        provider = get_provider(rec.provider, self.paths)
        hosts = [(h.host, lambda host: self.ctx.hosts.transport(provider, host))
                 for h in applied_hosts(self.state, app)]
        with self.state.lock(app, "extend"):
            lifetime.extend(self.ctx, app, provider, ttl_s, hosts)
            state_backup.save(self.state, app)
        found = self.expiry(app)
        assert found is not None
        return found

    def expiry(self, app: str) -> Expiry | None:
        rec = self.state.require_app(app)
        return lifetime.expiry(self.state, app, rec.provider, get_provider(rec.provider, self.paths).lifetime)

    def destroy(self, app: str, provider_name: str | None = None, force: bool = False) -> int:
        return teardown.destroy(self.ctx, app, provider_name, force)

    def health(self) -> list[AppHealth]:
        """Every app with the status a cheap liveness check gives it (`ravel list`)."""
        apps = self.state.apps()
        return ([health.app_health(self.state, a) for a in apps]
                + health.unknown_apps(self.paths, {a.name for a in apps}))

    def check_machine(self) -> list[Check]:
        """`ravel doctor`: what this machine has of what ravel needs (machine.py)."""
        return machine.check_machine(self.paths)

    def check_state(self) -> StateCheck:
        return doctor.check_state(self.ctx)

    def repair_state(self) -> Repair:
        return repair.repair_state(self.ctx)

    def snapshot(self, app: str, name: str | None = None, memory: bool = False,
                 store_url: str | None = None) -> SnapshotResult:
        """Snapshot `app` into the store at `store_url` (every VM paused together)."""
        ctx = self.ctx
        rec = ctx.state.require_app(app)
        name, store = open_target(ctx.paths, app, name, store_url)
        provider = get_provider(rec.provider, ctx.paths)
        with ctx.state.lock(app, "snapshot"):
            bp = nic_info.with_live_impairments(pipeline.stored_blueprint(ctx, app), ctx.state.nic_settings(app))
            return take_snapshot(ctx.paths, store, name, rec, bp,
                                 ctx.state.vms(app), list(applied_hosts(ctx.state, app)), lambda h: ctx.hosts.runtime(provider, h),
                                 memory, ctx.emit)

