"""Provisioning, as two stages the publish pipeline records separately:

1. **make**: every host is created (or found) at once, and each one is handed to `on_made`
   (which records it in the state) the moment it exists, so an interrupted or failed publish
   leaves everything it made where `ravel destroy` finds it;
2. **reach**: wait, bounded, until every host answers over its transport and, on cloud hosts,
   has written its ready report (``Host.extra["ready_file"]``, see ravel.render.cloud_init).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
import uuid
from dataclasses import dataclass, replace
from typing import Any

from .. import faults
from ..errors import HostKeyMismatch, ProviderError, RavelError, TransportError
from ..plan.plan import Plan
from ..providers.base import Host, HostSpec, Provider
from .accel import choose_accel, probe_is_current
from .lifetime import push_expiry
from ..events import Event

from .sessions import Context
from .hostrequest import HostRequest

# Cloud APIs are mostly waiting: every host of a lab is asked for at once (AWS and GCP throttle
# politely, and boto3/google-api-core retry a throttled call with backoff).
PARALLEL = 32


@dataclass(frozen=True)
class ProvisionOptions:
    """What `ravel publish` was told about making hosts (None: what the app's hosts were made
    with, else the provider's default)."""

    image: str | None = None  # --host-image
    ssh_from: str | None = None  # --ssh-from
    transport: str | None = None  # --transport
REACH_POLL_FIRST_S = 1.0
REACH_POLL_MAX_S = 10.0


def make_hosts(provider: Provider, specs: Sequence[HostSpec],
               on_made: Callable[[HostSpec, Host], None] = lambda s, h: None) -> dict[str, Host]:
    """ensure_host for every spec concurrently. A host that fails does not stop the others:
    all are tried (and recorded) first, then the first failure, in plan order, is raised."""
    def one(spec: HostSpec) -> Host:
        host = provider.ensure_host(spec)
        on_made(spec, host)
        return host

    return _all(one, specs, key=lambda s: s.name)


def reach_hosts(hosts: Mapping[str, Host], transport: Callable[[Host], Any], deadline: float,
                on_ready: Callable[[Host, dict[str, Any]], None] = lambda h, r: None) -> dict[str, dict[str, Any]]:
    """Wait for every host at once; returns each host's ready report ({} for hosts without one)."""
    def one(host: Host) -> dict[str, Any]:
        report = await_host(host, transport(host), deadline)
        on_ready(host, report)
        return report

    items = list(hosts.values())
    reports = _all(one, items, key=lambda h: h.name)
    return reports


def await_host(host: Host, transport: Any, deadline: float) -> dict[str, Any]:
    """Until `deadline` (time.monotonic): the host answers and its ready report says "ready".
    Hosts without a ready file (local namespaces) need nothing."""
    ready_file = host.ready_file
    if not ready_file:
        return {}
    started = time.monotonic()
    delay = REACH_POLL_FIRST_S
    answered, last = False, "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            # the transport retries connecting with backoff within this bound
            result = transport.run(["cat", ready_file], timeout=left, check=False)
        except HostKeyMismatch:
            raise  # never retried: waiting longer would only reach the same impostor
        except (TransportError, OSError) as exc:
            last = getattr(exc, "message", None) or str(exc)
        else:
            answered = True
            report = _report(result.stdout) if result.rc == 0 else None
            if report is not None:
                status = str(report.get("status", ""))
                if status == "ready":
                    return report
                raise ProviderError(f"{host.name}: the host's bootstrap failed: {status}",
                                    hint=f"see the host's console output; `ravel destroy {host.app}` removes it")
            last = "its bootstrap has not written a ready report yet"
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(delay, left))
        delay = min(delay * 2, REACH_POLL_MAX_S)
    waited = time.monotonic() - started
    hint = (f"what was made is recorded: `ravel destroy {host.app}` removes it, and publishing again "
            f"resumes (raise --timeout if the host is just slow)")
    if answered:
        raise TransportError(f"{host.name} answered SSH but was not ready within {waited:.0f} s ({last})", hint=hint)
    raise TransportError(f"{host.name} did not answer SSH within {waited:.0f} s ({_last_reason(last)})", hint=hint)


def _report(text: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _last_reason(message: str) -> str:
    # the transport's message starts with the host's name: keep only what went wrong
    head, sep, tail = message.partition(": ")
    return tail if sep and head.startswith("host") else message


def _all(fn: Callable[[Any], Any], items: Sequence[Any], key: Callable[[Any], str]) -> dict[str, Any]:
    if not items:
        return {}
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(items))) as pool:
        futures = {pool.submit(fn, item): key(item) for item in items}
        wait(futures)
    for future, name in futures.items():
        exc = future.exception()
        if exc is None:
            results[name] = future.result()
        else:
            errors[name] = exc
    for item in items:  # first failure in plan order, user errors before bugs
        exc = errors.get(key(item))
        if isinstance(exc, RavelError):
            raise exc
    for item in items:
        exc = errors.get(key(item))
        if exc is not None:
            raise exc
    return {key(item): results[key(item)] for item in items}


def provision(ctx: Context, app: str, plan: Plan, provider: Provider, deadline: float,
              options: ProvisionOptions) -> dict[str, Host]:
    """Make every host (each recorded in the state the moment it exists), then wait, bounded
    by `deadline`, until each answers and has reported ready. Both stages are resumable."""
    planned = [h.name for h in plan.placement.hosts]
    ids = ctx.state.host_ids(app, planned)
    types = {h.name: h for h in plan.placement.hosts}
    extras = {r.name: dict(r.extra) for r in ctx.state.hosts(app)}
    lifetime = ctx.state.lifetime(app)  # hosts that enforce it themselves get it at birth
    specs = []
    for name in planned:
        made = HostRequest.recorded(extras[name])
        req = HostRequest(made.token if made else uuid.uuid4().hex,
                          options.image or (made.image if made else None),
                          options.ssh_from or (made.ssh_from if made else None),
                          options.transport or (made.transport if made else None))
        if req != made:
            extras[name]["provision"] = req.to_dict()
            ctx.state.update_host(app, name, extra=extras[name])
        specs.append(HostSpec(app, name, ids[name], types[name].type.name, image=req.image,
                              ssh_from=req.ssh_from, token=req.token, deadline=deadline,
                              transport=req.transport or "",
                              expires=lifetime.expires if lifetime else None,
                              expiry_action=lifetime.action if lifetime else "destroy"))

    def made_one(spec: HostSpec, h: Host) -> None:
        faults.point("provision.made")
        extras[spec.name]["host"] = h.extra
        ctx.state.update_host(app, spec.name, type=spec.type, ref=h.ref, address=h.address,
                               status="provisioned", extra=extras[spec.name])
        faults.point("provision.recorded")
        if h.ready_file:
            ctx.emit(Event("hosts", f"{spec.name} created ({h.ref}, {h.address}); waiting for it to boot",
                            host=spec.name))

    hosts = make_hosts(provider, specs, made_one)

    def ready_one(h: Host, report: dict[str, Any]) -> None:
        if report:
            extras[h.name]["ready"] = report
        # the host answers over its transport (SSH retried while it boots, bounded by the
        # deadline) and holds this exact runtime before it counts as up: every host does
        # before anything is applied anywhere
        rt = ctx.hosts.runtime(provider, h, deadline)
        probed = not probe_is_current(extras[h.name].get("facts"), h.ref)
        if probed:  # once per host: a re-publish asks nothing
            extras[h.name]["facts"] = {**rt.facts(), "ref": h.ref}
        if lifetime is not None and provider.lifetime == "host-timer":
            push_expiry(rt.t, lifetime.expires)  # as recorded now: `ravel extend` may have moved it
        choice = choose_accel(types[h.name].accel, extras[h.name]["facts"])
        if probed and choice.note:
            ctx.emit(Event("hosts", f"{h.name}: {choice.note}", host=h.name))
        ctx.state.update_host(app, h.name, status="up", accel=choice.accel, extra=extras[h.name])
        ctx.emit(Event("hosts", f"{h.name} ready ({h.ref}, {h.address})", host=h.name, done=True))

    reports = reach_hosts(hosts, lambda h: ctx.hosts.transport(provider, h), deadline, ready_one)
    # the underlay device is what the host itself reported (ens5, eth0...), where it did
    return {name: replace(h, device=reports[name].get("underlay_device") or h.device)
            for name, h in hosts.items()}
