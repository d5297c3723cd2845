"""The graph as Graphviz DOT: hosts as clusters, networks as segments (wide boxes) above them,
a VM node per VM (its NICs' networks, addresses and models in its label) with an edge to each
network it has a NIC on. Pure; every node and cluster has an `id` (vm-NAME, net-NAME,
host-NAME) that the SVG keeps, so `ravel ui` can find and recolour them.

Readable with 50 VMs: a host's VMs are laid out in a square-ish grid and hosts in rows of a
few (invisible edges push the next row down), so the picture grows both ways, not into one
row of 50 boxes."""

from __future__ import annotations

import math

from .model import Graph, VmNode, colours, host_caption, net_caption, nic_line, vm_caption



def quote(text: str) -> str:
    """A DOT string literal ("..." with backslashes, quotes and newlines escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(lines: list[str]) -> str:
    return quote("\n".join(lines))


def to_dot(g: Graph) -> str:
    out = [f"graph {quote(g.app)} {{",
           f"  graph [id={quote('app-' + g.app)}, label={quote(g.app + (' (plan)' if g.kind == 'plan' else ''))}, "
           'labelloc=t, fontname="Helvetica", fontsize=16, rankdir=LR, newrank=true, nodesep=0.25, ranksep=1.2];',
           '  node [fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=9, color="#555555"];']
    for n in g.networks:
        out.append(f"  {quote('net:' + n.name)} [id={quote('net-' + n.name)}, shape=box, style=\"filled,rounded\", "
                   f'fillcolor="#dfe9f5", color="#1f4e79", penwidth=2, width=3, label={_label(net_caption(n))}];')
    if g.networks:
        out.append("  { rank=min; " + " ".join(quote("net:" + n.name) for n in g.networks) + " }")
    placed = {h.name for h in g.hosts}
    groups = [(h.name, host_caption(h)) for h in g.hosts]
    if any(v.host not in placed for v in g.vms):
        groups.append((None, "not placed"))
    members_of = [[v for v in g.vms if (v.host == host if host is not None else v.host not in placed)]
                  for host, _ in groups]
    for i, (host, caption) in enumerate(groups):
        out.append(f"  subgraph {quote('cluster_' + (host or '-'))} {{")
        out.append(f"    graph [id={quote('host-' + (host or '-'))}, label={quote(caption)}, style=\"rounded,dashed\", "
                   'color="#888888", fontsize=11];')
        members = members_of[i]
        for v in members:
            fill, border = colours(v)
            shape = "box3d" if v.nested else "box"
            extra = ", peripheries=2" if v.services else ""
            out.append(f"    {quote('vm:' + v.name)} [id={quote('vm-' + v.name)}, shape={shape}, style=filled, "
                       f'fillcolor="{fill}", color="{border}"{extra}, '
                       f"label={_label([v.name, *vm_caption(v), *map(nic_line, v.nics)])}];")
        if not members:
            out.append(f"    {quote('empty:' + str(i))} [label=\"no VMs\", shape=plaintext];")
        out.extend(f"    {quote('vm:' + a.name)} -- {quote('vm:' + b.name)} [style=invis];" for a, b in _grid(members))
        out.append("  }")
    for v in g.vms:
        for k, nic in enumerate(v.nics):
            out.append(f"  {quote('net:' + nic.network)} -- {quote('vm:' + v.name)} [id={quote(f'nic-{v.name}-{k}')}];")
    out.append("}")
    return "\n".join(out) + "\n"


def _grid(vms: list[VmNode]) -> list[tuple[VmNode, VmNode]]:
    """Invisible edges that stack a host's VMs in rows of about sqrt(n): each VM above the one
    a row's width after it."""
    width = max(1, math.ceil(math.sqrt(len(vms))))
    return [(vms[i], vms[i + width]) for i in range(len(vms) - width)]
