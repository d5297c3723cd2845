"""Ways into the guests: ssh, exec, cp, vnc, ssh-config, inventory (and proxy, for OpenSSH)."""

from __future__ import annotations

import enum
import sys
from typing import List, Optional

import typer

from . import documents, exits
from .common import app, err, out
from .common import context



@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def ssh(ctx: typer.Context) -> None:
    """Log in to a VM, or run one COMMAND in it: ravel ssh [-L SPEC] [-R SPEC] [-t] APP VM [-- COMMAND...]

    With OpenSSH through the VM's host; the guest's host key is the one ravel made for it.
    (`ravel` itself starts it without loading the CLI: see cli/launch.py; `ravel ssh --help`.)"""
    from ..access.login import main

    raise typer.Exit(main(ctx.args))


@app.command("ssh-config")
@exits.handled
def ssh_config(app_name: str = typer.Argument(..., metavar="APP")) -> None:
    """OpenSSH `Host <vm>.<app>` blocks for every VM: `ssh -F <(ravel ssh-config APP) VM.APP`."""
    from ..access.sshconfig import ssh_config as render

    ctx = context()
    try:
        text = render(ctx, app_name)
    finally:
        ctx.close()
    sys.stdout.write(text)


@app.command(hidden=True)
def proxy(
    app_name: str = typer.Argument(..., metavar="APP"),
    vm: str = typer.Argument(..., metavar="VM"),
    port: int = typer.Argument(..., metavar="PORT"),
    fdpass: bool = typer.Option(False, "--fdpass"),
) -> None:
    """stdin/stdout to a guest's TCP PORT through its host (OpenSSH's ProxyCommand)."""
    from ..access.proxy import main

    raise typer.Exit(main([app_name, vm, str(port), *(["--fdpass"] if fdpass else [])]))


@app.command("exec")
@exits.handled
def exec_(
    app_name: str = typer.Argument(..., metavar="APP"),
    vm: str = typer.Argument(..., metavar="VM"),
    command: List[str] = typer.Argument(..., metavar="-- COMMAND..."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds the command may run (then it is killed)."),
) -> None:
    """Run COMMAND in a VM through its QEMU guest agent: no network or SSH needed in the guest.

    stdout, stderr and exit status pass through; stdin is sent when it is not a terminal."""
    from ..access.execute import execute

    data = None if sys.stdin.isatty() else sys.stdin.buffer.read()
    ctx = context()
    try:
        done = execute(ctx, app_name, vm, command, data, timeout)
    finally:
        ctx.close()
    sys.stdout.buffer.write(done.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(done.stderr)
    if done.truncated:
        sys.stderr.write("ravel exec: the guest agent kept only the first part of the output\n")
    sys.stderr.flush()
    raise typer.Exit(done.status)


@app.command()
@exits.handled
def cp(
    src: str = typer.Argument(..., metavar="SRC"),
    dst: str = typer.Argument(..., metavar="DST"),
    agent: bool = typer.Option(False, "--agent", help="Through the QEMU guest agent instead of SSH."),
    as_json: bool = typer.Option(False, "--json", help="Print what was copied as JSON."),
) -> None:
    """Copy files or directories between here and a VM: one side is APP:VM:/path (like docker cp).

    Over SSH through the VM's host (or the guest agent); sizes and checksums are verified, and a
    partial copy is never left behind."""
    from ..access.agentcopy import copy_by_agent
    from ..access.copy import copy

    ctx = context()
    try:
        done = (copy_by_agent if agent else copy)(ctx, src, dst)
    finally:
        ctx.close()
    if as_json:
        documents.write({"src": src, "dst": dst, "via": "agent" if agent else "ssh",
                         "files": done.files, "bytes": done.bytes})
        return
    err.print(f"copied {done.files} file{'s' if done.files != 1 else ''}, {done.bytes} bytes", markup=False)


@app.command()
@exits.handled
def vnc(
    app_name: str = typer.Argument(..., metavar="APP"),
    vm: str = typer.Argument(..., metavar="VM"),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="Port on 127.0.0.1 (default: a free one)."),
) -> None:
    """Forward a VM's VNC console to a port on 127.0.0.1 here, until Ctrl-C."""
    from ..access.vnc import forward

    def listening(url: str) -> None:
        out.print(url, markup=False)
        err.print("forwarding the VM's VNC console; Ctrl-C to stop", markup=False)

    ctx = context()
    try:
        forward(ctx, app_name, vm, port, listening)
    except KeyboardInterrupt:
        err.print("stopped", markup=False)
    finally:
        ctx.close()


class InventoryFormat(str, enum.Enum):
    ini = "ini"
    yaml = "yaml"
    json = "json"


@app.command()
@exits.handled
def inventory(
    app_name: str = typer.Argument(..., metavar="APP"),
    fmt: InventoryFormat = typer.Option(
        InventoryFormat.yaml, "--format",
        help="yaml (what Ansible reads from a pipe: `-i <(ravel inventory APP)`), ini or json."),
) -> None:
    """An Ansible inventory of the app's VMs (groups per VM group and per network), reached
    with the app's ssh-config: `ansible -i <(ravel inventory APP) all -m ping`."""
    from ..access.inventory import inventory as render

    ctx = context()
    try:
        text = render(ctx, app_name, fmt.value)
    finally:
        ctx.close()
    sys.stdout.write(text)
