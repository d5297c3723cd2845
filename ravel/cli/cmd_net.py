"""Network tools for a running lab: `ravel netem` (link impairment), `ravel link` (cable pulls),
`ravel capture` (packets of a network or a NIC, from every host, as one pcap)."""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..model.impair import impair_from
from . import documents, exits
from .common import app, err, out
from .common import lab as open_lab


def _nics_table(app_name: str, nics) -> Table:  # nics: list[NicState]
    t = Table(title=app_name, title_justify="left")
    for col in ("NIC", "network", "host", "tap", "link", "impairment", "from"):
        t.add_column(col)
    for n in nics:
        t.add_row(f"{n.vm}:{n.index}", n.network, n.host, n.tap or "-", n.link, n.impair.words(),
                  n.source or "-")
    return t


@app.command()
@exits.handled
def netem(
    app_name: str = typer.Argument(..., metavar="APP"),
    target: Optional[str] = typer.Argument(None, metavar="[VM[:NIC]]",
                                           help="The NIC: VM (its only NIC), VM:N, VM:ethN or VM:NETWORK. "
                                                "Without one: list every NIC's impairment."),
    delay: Optional[str] = typer.Option(None, "--delay", help="Added to each frame the guest receives: 50ms."),
    jitter: Optional[str] = typer.Option(None, "--jitter", help="The delay varies by up to this: 5ms."),
    loss: Optional[str] = typer.Option(None, "--loss", help="Frames to the guest that are dropped: 1%."),
    corrupt: Optional[str] = typer.Option(None, "--corrupt", help="Frames to the guest with a bit flipped: 0.1%."),
    duplicate: Optional[str] = typer.Option(None, "--duplicate", help="Frames the guest receives twice: 0.5%."),
    rate: Optional[str] = typer.Option(None, "--rate", help="Bandwidth to the guest: 10mbit, 512kbit."),
    clear: bool = typer.Option(False, "--clear", help="No impairment on this NIC (kept until changed, "
                               "even over the blueprint's)."),
    reset: bool = typer.Option(False, "--reset", help="Back to what the blueprint says (nics[].impair)."),
    as_json: bool = typer.Option(False, "--json", help="Print the NICs as JSON."),
) -> None:
    """Impair a NIC's link (tc netem/tbf on its tap), or list what every NIC has. The setting
    replaces the NIC's whole impairment, and is kept across publish, stop and start."""
    values = (delay, jitter, loss, corrupt, duplicate, rate)
    given = any(v is not None for v in values)
    if target is None and (given or clear or reset):
        raise typer.BadParameter("say which NIC: ravel netem APP VM[:NIC] ...", param_hint="VM[:NIC]")
    if sum([given, clear, reset]) > 1:
        raise typer.BadParameter("give values, --clear or --reset: one of them")
    lab = open_lab()
    try:
        if target is None:
            nics = lab.nics(app_name)
            changed = None
        else:
            if not (given or clear or reset):
                nics, changed = lab.find_nics(app_name, target), None
            else:
                try:
                    impair = None if reset else impair_from(*values)
                except ValueError as exc:
                    raise typer.BadParameter(str(exc)) from None
                now, changed = lab.set_impair(app_name, target, impair)
                nics = [now]
                if not as_json:
                    err.print(f"{now.vm}:{now.index} ({now.network}): {now.impair.words()}", markup=False)
    finally:
        lab.close()
    if as_json:
        documents.write(documents.nics(app_name, nics, changed))
    elif changed is None:
        out.print(_nics_table(app_name, nics))


class LinkState(str, enum.Enum):
    up = "up"
    down = "down"


@app.command()
@exits.handled
def link(
    app_name: str = typer.Argument(..., metavar="APP"),
    target: str = typer.Argument(..., metavar="VM[:NIC]", help="VM (its only NIC), VM:N, VM:ethN or VM:NETWORK."),
    state: LinkState = typer.Argument(..., help="down: pull the NIC's cable (the guest sees no carrier); up: "
                                                "plug it back."),
    as_json: bool = typer.Option(False, "--json", help="Print the NIC as JSON."),
) -> None:
    """Pull a NIC's cable or plug it back in (QEMU's set_link); kept across publish, stop and start."""
    lab = open_lab()
    try:
        now, changed = lab.set_link(app_name, target, state == LinkState.up)
    finally:
        lab.close()
    if as_json:
        documents.write(documents.nics(app_name, [now], changed))
    else:
        err.print(f"{now.vm}:{now.index} ({now.network}): link {now.link}", markup=False)


class CaptureFormat(str, enum.Enum):
    pcap = "pcap"
    pcapng = "pcapng"


@app.command()
@exits.handled
def capture(
    app_name: str = typer.Argument(..., metavar="APP"),
    target: str = typer.Argument(..., metavar="NETWORK|VM[:NIC]",
                                 help="A network (its traffic on every host, each packet once) or a NIC "
                                      "(a VM alone: all its NICs)."),
    write: Optional[Path] = typer.Option(None, "-w", "--write", metavar="FILE",
                                         help="Write to FILE instead of stdout."),
    bpf: Optional[str] = typer.Option(None, "-f", "--filter", metavar="BPF",
                                      help="A tcpdump filter: 'icmp', 'host 10.0.0.5 and tcp port 80'."),
    count: Optional[int] = typer.Option(None, "-c", "--count", min=1, help="Stop after N packets."),
    duration: Optional[float] = typer.Option(None, "--duration", min=0.1, metavar="S",
                                             help="Stop after S seconds."),
    fmt: Optional[CaptureFormat] = typer.Option(
        None, "--format", help="pcapng (one interface per host; the default) or pcap; -w FILE.pcap means "
                               "pcap"),
) -> None:
    """Capture packets with tcpdump on the hosts, merged in time order, to a pcap for Wireshark:
    `ravel capture lab lan | wireshark -k -i -`. Ends at -c, --duration or Ctrl-C."""
    chosen = fmt.value if fmt else ("pcap" if write and write.suffix == ".pcap" else "pcapng")
    lab = open_lab()
    try:
        if write is not None:
            with open(write, "wb") as f:
                n = lab.capture(app_name, target, f, chosen, bpf, count, duration)
        else:
            if sys.stdout.isatty():
                raise typer.BadParameter("stdout is a terminal: pipe it (| wireshark -k -i -, | tcpdump -r -) "
                                         "or give -w FILE", param_hint="-w")
            try:
                n = lab.capture(app_name, target, sys.stdout.buffer, chosen, bpf, count, duration)
            except BrokenPipeError:  # wireshark (or head) closed the pipe: a normal end
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                err.print("stopped: the reader of stdout went away", markup=False)
                return
    finally:
        lab.close()
    err.print(f"{n} packet{'s' if n != 1 else ''} captured", markup=False)
