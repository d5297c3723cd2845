"""Seeing a lab: `ravel graph` (SVG, DOT, Mermaid, JSON) and `ravel ui` (a local web page)."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from . import exits
from .common import app, err, out, provider_option
from .common import lab as open_lab


class GraphFormat(str, enum.Enum):
    svg = "svg"
    dot = "dot"
    mermaid = "mermaid"
    json = "json"


@app.command()
@exits.handled
def graph(
    target: str = typer.Argument(..., metavar="FILE|APP", help="A blueprint file (its plan) or a published app."),
    fmt: GraphFormat = typer.Option(GraphFormat.svg, "--format", "-f",
                                    help="svg (Graphviz), dot, mermaid (for Markdown) or json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE",
                                          help="Write here instead of stdout."),
    provider: str = typer.Option("local", "--provider", "-p", callback=provider_option,
                                 help="FILE: plan it for this provider's host types."),
) -> None:
    """Draw an app or a blueprint's plan: networks as segments, VMs with their NICs' addresses and
    models, hosts as groups, exposed services; for an app, each VM's state and readiness."""
    from ..graph.dot import to_dot
    from ..graph.mermaid import to_mermaid
    from ..graph.source import app_graph, is_file, observed, plan_graph
    from ..graph.svg import to_svg

    if is_file(target):
        g = plan_graph(target, provider, on_unplaced=lambda why: err.print(f"note: {why}", markup=False))
    else:
        lab = open_lab(False)
        try:
            g = observed(app_graph(lab.ctx, target), lab.status(target))
        finally:
            lab.close()
    if fmt is GraphFormat.json:
        text = json.dumps(g.to_dict(), indent=2) + "\n"
    elif fmt is GraphFormat.mermaid:
        text = to_mermaid(g)
    elif fmt is GraphFormat.dot:
        text = to_dot(g)
    else:
        text = to_svg(to_dot(g))
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text)
    err.print(f"wrote {output} ({fmt.value}, {len(g.vms)} VMs, {len(g.networks)} networks)", markup=False)


@app.command()
@exits.handled
def ui(
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535,
                                       help="Port on 127.0.0.1 (default: a free one)."),
) -> None:
    """A local web page per app: the live topology, start/stop, serial console and VNC in the
    browser. Listens on 127.0.0.1 only; open the URL it prints (it carries a random token)."""
    from ..paths import paths
    from ..ui.serve import serve

    def listening(url: str) -> None:
        out.print(url, markup=False)
        err.print("serving ravel ui on this machine only; Ctrl-C to stop", markup=False)

    try:
        serve(paths(), port, listening)
    except KeyboardInterrupt:
        pass
    err.print("stopped", markup=False)
