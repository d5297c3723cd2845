"""Snapshots and the image store: `ravel snapshot`, `ravel snapshots`, `ravel store gc`,
`ravel store verify`, and `ravel import` (VMware VMs into a blueprint)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import StoreError
from ..paths import paths
from ..snapshot.gc import gc
from ..snapshot.integrity import local_copies, verify_store
from ..snapshot.layers import read_manifest, remove_snapshot
from ..snapshot.take import listing
from ..store import open_store
from . import documents, exits, progress
from .common import app, err, out
from .common import lab as open_lab

STORE_HELP = "Store URL: file:///DIR, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (default: the local store)."
store_app = typer.Typer(help="The image store: layers and snapshot manifests.", no_args_is_help=True)
app.add_typer(store_app, name="store")


def _usage(message: str) -> None:
    raise exits.UsageError(message)  # exits.handled: exit 2, and an error document with --json


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@app.command()
@exits.handled
def snapshot(
    app_name: str = typer.Argument(..., metavar="APP"),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Snapshot name (default: APP-DATE-TIME)."),
    memory: bool = typer.Option(False, "--memory", help="Also save each VM's RAM and device state."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Capture a running app: pause every VM together, freeze each disk as a layer, resume, and
    store the new layers by content hash with a manifest that `ravel publish --from` runs."""
    lab = open_lab()
    try:
        r = lab.snapshot(app_name, name, memory, store)
    finally:
        lab.close()
    if as_json:
        documents.write({
            "name": r.name, "app": app_name, "store": r.store, "pause_s": r.pause_s, "vms": r.vms,
            "layers": r.layers, "bytes_total": r.bytes_total, "bytes_uploaded": r.bytes_uploaded,
            "manifest_bytes": r.manifest_bytes, "bytes_stored": r.bytes_stored, "host_pause_s": r.per_host_pause,
            "bytes_fetched": r.bytes_fetched, "layers_fetched": r.layers_fetched,
            "layers_checked": r.layers_checked, "bytes_checked": r.bytes_checked,
            "layers_repaired": r.layers_repaired, "memory": memory})
        return
    out.print(f"snapshot {r.name}: {r.vms} VMs paused for {r.pause_s * 1000:.0f} ms; "
              f"{r.layers} layers ({_mib(r.bytes_total)}), {_mib(r.bytes_stored)} new in {r.store}")
    out.print(f"publish it: ravel publish --from {r.name}" + (f" --store {store}" if store else ""))


@app.command()
@exits.handled
def snapshots(
    action: str = typer.Argument("list", metavar="[list|show|rm]", help="What to do (default: list)."),
    name: Optional[str] = typer.Argument(None, metavar="[NAME]", help="Snapshot, for show and rm."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List the snapshots in a store, show one, or remove one (its layers go at `ravel store gc`)."""
    if action not in ("list", "show", "rm"):
        _usage(f"unknown action {action!r}; use list, show or rm")
    if action in ("show", "rm") and not name:
        _usage(f"`ravel snapshots {action}` needs a snapshot NAME")
    p = paths()
    if action == "list":
        st, manifests, problems = listing(p, store)
        for problem in problems:  # one damaged manifest hides no other snapshot
            err.print(f"warning: {problem} (skipped)", markup=False)
        if as_json:
            documents.write([{"name": m.name, "app": m.app, "created": m.created, "vms": len(m.vms),
                              "bytes": m.total_bytes(), "pause_s": m.pause_s} for m in manifests])
            return
        if not manifests:
            out.print(f"no snapshots in {st.url}")
            return
        t = Table(title=st.url, title_justify="left")
        for col in ("snapshot", "app", "created", "VMs", "layers", "size", "pause"):
            t.add_column(col)
        for m in manifests:
            t.add_row(m.name, m.app, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.created)), str(len(m.vms)),
                      str(len(m.layers())), _mib(m.total_bytes()),
                      f"{m.pause_s * 1000:.0f} ms" if m.pause_s is not None else "-")
        out.print(t)
        return
    st = open_store(store, p)
    assert name is not None
    if action == "rm":
        remove_snapshot(st, name)
        if as_json:
            documents.write({"removed": name, "store": st.url})
            return
        out.print(f"snapshot {name} removed; `ravel store gc` frees the layers no other snapshot uses")
        return
    m = read_manifest(st, name)
    if as_json:  # the manifest itself, as the store keeps it
        sys.stdout.write(m.to_json().decode().rstrip("\n") + "\n")
        return
    out.print(f"snapshot {m.name} of app {m.app} ({m.provider}), {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(m.created))}")
    t = Table()
    for col in ("VM", "host", "disk", "layers (base first)", "size"):
        t.add_column(col)
    for vm in m.vms:
        for d in vm.disks:
            t.add_row(vm.name, vm.host, str(d.index), " ".join(x.sha256[:12] for x in d.layers),
                      _mib(sum(x.size for x in d.layers)))
        if vm.memory:
            t.add_row(vm.name, vm.host, "memory", vm.memory.sha256[:12], _mib(vm.memory.size))
    out.print(t)


@store_app.command("gc")
@exits.handled
def store_gc(
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be removed."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Remove the layers no snapshot references (refuses while a snapshot is being taken)."""
    st = open_store(store, paths())
    r = gc(st, dry_run=dry_run, emit=progress.printer(err))
    for problem in r.unreadable:
        err.print(f"warning: {problem} (every layer it names was kept)", markup=False)
    if as_json:
        documents.write({"store": st.url, "dry_run": dry_run, "removed": list(r.removed),
                         "freed_bytes": r.freed_bytes, "kept": r.kept, "unreadable": list(r.unreadable)})
        return
    verb = "would remove" if dry_run else "removed"
    out.print(f"{st.url}: {verb} {len(r.removed)} layers ({_mib(r.freed_bytes)}), kept {r.kept}")


@store_app.command("verify")
@exits.handled
def store_verify(
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    repair: bool = typer.Option(False, "--repair", help="Upload damaged or missing layers again from copies on "
                                "this machine; remove damaged layers that have none."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Read back every layer and check its sha256, read every snapshot manifest, and list the
    snapshots that cannot be restored (exit 8 while anything is wrong)."""
    p = paths()
    st = open_store(store, p)
    r = verify_store(st, repair=repair, copies=lambda: local_copies(p), emit=progress.printer(err))
    if as_json:
        documents.write({"store": st.url, "repair": repair, "layers": r.layers, "bytes_read": r.bytes_read,
                         "snapshots": r.manifests, "problems": r.problems, "repaired": r.repaired,
                         "seconds": r.seconds})
        if r.problems:
            raise typer.Exit(exits.ExitStatus.STORE)
        return
    for line in r.repaired:
        out.print(f"repaired: {line}", markup=False)
    for line in r.problems:
        out.print(f"problem: {line}", markup=False)
    out.print(f"{st.url}: {r.layers} layers read back ({_mib(r.bytes_read)} in {r.seconds:.1f} s), "
              f"{r.manifests} snapshots read; {len(r.problems)} problems" + (f", {len(r.repaired)} repaired" if repair else ""))
    if r.problems:
        raise StoreError(f"{st.url}: {len(r.problems)} problem{'s' if len(r.problems) != 1 else ''} found",
                         hint=None if repair else "`ravel store verify --repair` mends what a copy on this machine can")


@app.command("import")
@exits.handled
def import_vm(
    path: Path = typer.Argument(..., help="A .ova, .ovf, .vmx, or a bare .vmdk/.qcow2/raw disk image."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the blueprint (YAML) here."),
    as_json: bool = typer.Option(False, "--json", help="Print the VMs as JSON instead of YAML."),
) -> None:
    """Read a VMware VM (CPUs, memory, firmware, disk controllers, NIC models) into a blueprint.
    Disks from an .ova are extracted next to the output file."""
    from ..importers import import_path, write_blueprint

    result = import_path(path, output)
    for note in result.notes:
        err.print(f"note: {note}", markup=False)
    if output is not None:
        write_blueprint(result, output)
        err.print(f"wrote {output}", markup=False)
    if as_json:  # written once it is done: the document names the file
        documents.write({**result.json(), "notes": list(result.notes),
                         "output": str(output) if output is not None else None})
    elif output is None:
        sys.stdout.write(result.yaml())

