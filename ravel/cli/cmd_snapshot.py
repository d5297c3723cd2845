"""Snapshots and the image store: `ravel snapshot`, `ravel snapshots`, `ravel store gc`, and
`ravel import` (VMware VMs into a blueprint)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..paths import paths
from ..snapshot.layers import gc, read_manifest, remove_snapshot
from ..snapshot.take import snapshots as list_snapshots
from ..store import open_store
from . import documents, exits
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
            "memory": memory})
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
        st, manifests = list_snapshots(p, store)
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
    r = gc(st, dry_run=dry_run)
    if as_json:
        documents.write({"store": st.url, "dry_run": dry_run, "removed": list(r.removed),
                         "freed_bytes": r.freed_bytes, "kept": r.kept})
        return
    verb = "would remove" if dry_run else "removed"
    out.print(f"{st.url}: {verb} {len(r.removed)} layers ({_mib(r.freed_bytes)}), kept {r.kept}")


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

