"""Lab life-cycle commands: publish, status, list, console, logs, stop, start, destroy."""

from __future__ import annotations

import enum
import re
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..model.spec import NAME_RE
from . import documents, exits
from ..run.lifetime import LifetimeRequest
from .common import BUDGET_HELP, TTL_HELP, app, budget_option, err, out, provider_option, ttl_option
from .common import lab as open_lab
from .render import apps_table, changes_report, down_lines, nic_lines, vm_table

_provider = provider_option


class TransportKind(str, enum.Enum):
    netns = "netns"
    ssh = "ssh"


@app.command()
@exits.handled
def publish(
    file: Optional[Path] = typer.Argument(None, help="Blueprint file (or --from SNAPSHOT).", show_default=False),
    provider: str = typer.Option("local", "--provider", "-p", callback=_provider, help="Where the hosts run."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="App name (default: the blueprint's name)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until every VM's console says it is ready."),
    timeout: float = typer.Option(600.0, "--timeout", help="Bound on the whole publish, in seconds."),
    from_snapshot: Optional[str] = typer.Option(None, "--from", metavar="SNAPSHOT",
                                                help="Publish a snapshot (`ravel snapshots`) instead of a file."),
    store: Optional[str] = typer.Option(None, "--store", help="Store holding the snapshot (default: the local store)."),
    host_image: Optional[str] = typer.Option(
        None, "--host-image", metavar="IMAGE",
        help="aws/gcp: the hosts' image instead of Debian 12 (also RAVEL_AWS_AMI / RAVEL_GCP_IMAGE)."),
    ssh_from: Optional[str] = typer.Option(
        None, "--ssh-from", metavar="CIDR",
        help="aws/gcp: the only address range allowed to SSH to the hosts and to exposed services "
             "without an `allow` (also RAVEL_SSH_FROM; default: this machine's public address as a /32, "
             "learned from RAVEL_CHECKIP_URL, default https://checkip.amazonaws.com/)."),
    transport: Optional[TransportKind] = typer.Option(
        None, "--transport",
        help="How ravel reaches the hosts: netns (local only: `ip netns exec`) or ssh (local: an sshd "
             "in every host). Default: what the app already uses, else the provider's own (local: "
             "netns; aws, gcp: ssh)."),
    ttl: Optional[str] = typer.Option(None, "--ttl", metavar="DURATION", help=TTL_HELP),
    budget: Optional[float] = typer.Option(None, "--budget", metavar="AMOUNT", callback=budget_option,
                                           help=BUDGET_HELP),
    dry_run: bool = typer.Option(
        False, "--dry-run",
        help="Only show what a publish would change (hosts, VMs, networks, services, firewall rules), "
             "touching nothing; exit 0 when nothing would change, 10 when something would."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON document (docs/json.md)."),
) -> None:
    """Create the hosts, wire the networks and boot every VM; re-running applies only changes."""
    if name is not None:
        _check_app_name(name)
    if provider == "local" and (host_image or ssh_from):
        raise typer.BadParameter("--host-image and --ssh-from apply to the aws and gcp providers only")
    _warn_if_open_to_everyone(provider, ssh_from)
    if (file is None) == (from_snapshot is None):
        raise exits.UsageError("give a blueprint FILE or --from SNAPSHOT (one of them)")
    lifetime = LifetimeRequest(ttl_option(ttl), budget)
    if dry_run:
        if file is None:
            raise exits.UsageError("--dry-run compares a blueprint FILE with the running app, not --from")
        _dry_run(str(file), name, provider, transport.value if transport else None, timeout, as_json)
        return
    lab = open_lab()
    try:
        if from_snapshot is not None:
            result = lab.publish_snapshot(from_snapshot, name=name, provider_name=provider, store_url=store,
                                          wait=wait, timeout=timeout, host_image=host_image, ssh_from=ssh_from,
                                          transport=transport.value if transport else None, lifetime=lifetime)
        else:
            result = lab.publish(str(file), name=name, provider_name=provider, wait=wait, timeout=timeout,
                                 host_image=host_image, ssh_from=ssh_from,
                                 transport=transport.value if transport else None, lifetime=lifetime)
    finally:
        lab.close()
    if as_json:
        documents.write(documents.published(result, provider, from_snapshot))
        return
    if result.changed == 0:
        out.print(f"{result.app}: nothing to do, everything is up to date")
    out.print(vm_table(result.app, result.vms))
    if result.ready_s is not None:
        out.print(f"all VMs ready after {result.ready_s:.1f} s")
    # the table's caption names `ravel console`
    out.print(f"detach a console with Ctrl-]   logs: ravel logs {result.app} VM")


def _dry_run(file: str, name: Optional[str], provider: str, transport: Optional[str], timeout: float,
             as_json: bool) -> None:
    lab = open_lab(False)
    try:
        result = lab.dry_run(file, name=name, provider_name=provider, transport=transport, timeout=timeout)
    finally:
        lab.close()
    if as_json:
        documents.write(result.to_dict())
    else:
        out.print(changes_report(result))
    if result.changed:  # for CI drift checks: 10 = a publish would change something
        raise typer.Exit(exits.ExitStatus.CHANGES)


def _warn_if_open_to_everyone(provider: str, ssh_from: Optional[str]) -> None:
    import ipaddress
    import os

    raw = ssh_from or os.environ.get("RAVEL_SSH_FROM")
    if provider == "local" or not raw:
        return
    try:
        everyone = ipaddress.ip_network(raw.strip(), strict=False).prefixlen == 0
    except ValueError:
        # bad input, said before anything is recorded or asked of the cloud
        where = "--ssh-from" if ssh_from else "RAVEL_SSH_FROM"
        raise typer.BadParameter(f"{where} {raw.strip()!r} is not an address or CIDR "
                                 "(e.g. 203.0.113.7/32)") from None
    if everyone:
        err.print(f"warning: --ssh-from {raw.strip()} opens SSH (and exposed services without an `allow`) "
                  "to the whole internet", markup=False)


@app.command()
@exits.handled
def status(
    app_name: Optional[str] = typer.Argument(None, metavar="[APP]", help="App (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Each VM's state, host, addresses, accelerator and console."""
    lab = open_lab(False)
    try:
        names = [app_name] if app_name else [a.name for a in lab.state.apps()]
        data = {n: lab.status(n) for n in names}
        expiries = {n: lab.expiry(n) for n in names}
    finally:
        lab.close()
    if as_json:
        documents.write({n: documents.vms(vms) for n, vms in data.items()})
        return
    if not data:
        out.print("no apps")
    for n, vms in data.items():
        out.print(vm_table(n, vms))
        _print_expiry(expiries[n])
        for line in down_lines(n, vms) + nic_lines(n, vms):
            out.print(line, markup=False)


@app.command("list")
@exits.handled
def list_apps(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The apps ravel knows about, each with its status as a cheap liveness check finds it:
    running, degraded (1 of 4 VMs down), stopped, destroying, broken (...)."""
    lab = open_lab(False)
    try:
        rows = lab.health()
        expiries = {h.app: lab.expiry(h.app) for h in rows if h.recorded}  # not the unknown ones
    finally:
        lab.close()
    if as_json:
        documents.write([{"name": h.app, "provider": h.provider, "status": h.status,
                          "recorded": h.recorded, "hosts": h.hosts, "vms": len(h.vm_names),
                          "down": list(h.down), "seen_s": h.seen_s, "busy_pid": h.busy,
                          "expiry": e.to_dict() if (e := expiries.get(h.app)) else None}
                         for h in rows])
        return
    out.print(apps_table(rows, expiries))
    for hint in sorted({e.hint for e in expiries.values() if e and e.hint and e.left_s <= 0}):
        err.print(f"hint: {hint}", markup=False)


def _print_expiry(e) -> None:  # e: Expiry | None
    if e is None:
        return
    out.print(f"lifetime: {e.describe()}", markup=False)
    if e.hint:
        err.print(f"hint: {e.hint}", markup=False)


@app.command()
@exits.handled
def extend(
    app_name: str = typer.Argument(..., metavar="APP"),
    ttl: str = typer.Option(..., "--ttl", metavar="DURATION", help="The app now lives this long from now (1h, 90m)."),
    as_json: bool = typer.Option(False, "--json", help="Print the new expiry as JSON."),
) -> None:
    """Move an app's expiry: it now ends DURATION from now (see `ravel publish --ttl`)."""
    seconds = ttl_option(ttl)
    assert seconds is not None
    lab = open_lab()
    try:
        e = lab.extend(app_name, seconds)
    finally:
        lab.close()
    if as_json:
        documents.write({"app": app_name, "expiry": e.to_dict()})
        return
    out.print(f"{app_name}: {e.describe()}", markup=False)


@app.command()
@exits.handled
def console(app_name: str = typer.Argument(..., metavar="APP"), vm: str = typer.Argument(..., metavar="VM")) -> None:
    """Attach to a VM's serial console. Detach with Ctrl-] (the key is not sent to the VM)."""
    def attached() -> None:
        if sys.stdin.isatty():
            err.print(f"connected to {vm}; detach with Ctrl-]", markup=False)

    lab = open_lab(False)
    try:
        lab.console(app_name, vm, on_attached=attached)
    finally:
        lab.close()


@app.command()
@exits.handled
def logs(
    app_name: str = typer.Argument(..., metavar="APP"),
    vm: str = typer.Argument(..., metavar="VM"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new output."),
) -> None:
    """A VM's serial console output so far (like `docker logs`)."""
    lab = open_lab(False)
    try:
        for chunk in lab.console_output(app_name, vm, follow=follow):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    finally:
        lab.close()


@app.command()
@exits.handled
def stop(app_name: str = typer.Argument(..., metavar="APP"),
         vms: Optional[List[str]] = typer.Argument(None, metavar="[VM]..."),
         as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Stop an app's VMs (or the ones named); disks are kept."""
    _set_running(app_name, vms, False, as_json)


@app.command()
@exits.handled
def start(app_name: str = typer.Argument(..., metavar="APP"),
          vms: Optional[List[str]] = typer.Argument(None, metavar="[VM]..."),
          as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Start an app's stopped VMs (or the ones named)."""
    _set_running(app_name, vms, True, as_json)


def _set_running(app_name: str, vms: Optional[List[str]], running: bool, as_json: bool) -> None:
    lab = open_lab()
    try:
        changed = lab.set_running(app_name, vms or None, running)
        if as_json:  # each VM as it is now, as `ravel status` shows it
            now = lab.status(app_name)
            documents.write(documents.running(app_name, "start" if running else "stop",
                                              list(vms or [v.name for v in now]), changed, now))
    finally:
        lab.close()


@app.command()
@exits.handled
def destroy(
    app_name: str = typer.Argument(..., metavar="APP"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    force: bool = typer.Option(
        False, "--force",
        help="Also when the state is damaged or lost the app: remove what the hosts show for its name."),
    provider: str = typer.Option("local", "--provider", "-p", callback=_provider,
                                 help="With --force and no readable state: where the app's hosts are."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Remove an app: its VMs, disks, networks and hosts. Asks first, on a terminal only."""
    if not yes and sys.stdin.isatty():
        if not typer.confirm(f"destroy {app_name} and delete its disks?", default=False, err=as_json):
            raise typer.Exit(1)
    lab = open_lab(check_lost=not force)
    try:
        n = lab.destroy(app_name, provider_name=provider, force=force)
    finally:
        lab.close()
    if as_json:
        documents.write(documents.destroyed(app_name, n))
        return
    out.print(f"{app_name}: destroyed ({n} host{'s' if n != 1 else ''} removed)")


def _check_app_name(name: str) -> None:
    if not re.match(NAME_RE, name):
        raise typer.BadParameter(f"{name!r} is not a valid app name: lowercase letters, digits and dashes")


