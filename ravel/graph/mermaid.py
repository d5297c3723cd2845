"""The graph as a Mermaid flowchart, for pasting into Markdown: hosts as subgraphs, networks as
hexagons, an edge per NIC labelled with its address and model, VMs coloured by state. Pure.
Names are lowercase letters, digits and dashes, so ids are the name with a prefix and `_`."""

from __future__ import annotations

from .model import STATE_COLOURS, Graph, host_caption, look, net_caption, nic_caption, vm_caption


def _id(prefix: str, name: str) -> str:
    return prefix + "_" + name.replace("-", "_")


def _text(lines: list[str]) -> str:
    """A quoted Mermaid label: lines joined by <br/>, quotes as #quot;."""
    return '"' + "<br/>".join(s.replace('"', "#quot;") for s in lines) + '"'


def _class(key: str) -> str:
    return key.replace(" ", "_")


def to_mermaid(g: Graph) -> str:
    out = ["flowchart TB", f"  %% {g.app}" + (" (plan)" if g.kind == "plan" else "")]
    for n in g.networks:
        out.append(f"  {_id('net', n.name)}{{{{{_text(net_caption(n))}}}}}")
    placed = {h.name for h in g.hosts}
    groups = [(h.name, host_caption(h)) for h in g.hosts]
    if any(v.host not in placed for v in g.vms):
        groups.append((None, "not placed"))
    used: set[str] = set()
    for host, caption in groups:
        out.append(f"  subgraph {_id('host', host or 'none')}[{_text([caption])}]")
        for v in g.vms:
            if (v.host == host) if host is not None else (v.host not in placed):
                shape = ("[[", "]]") if v.nested else ("[", "]")
                out.append(f"    {_id('vm', v.name)}{shape[0]}{_text([v.name, *vm_caption(v)])}{shape[1]}")
        out.append("  end")
    for v in g.vms:
        for nic in v.nics:
            out.append(f"  {_id('net', nic.network)} ---|{_text([nic_caption(nic)])}| {_id('vm', v.name)}")
    for v in g.vms:
        key = look(v)
        used.add(key)
        out.append(f"  class {_id('vm', v.name)} {_class(key)}")
    for key in sorted(used):
        fill, border = STATE_COLOURS.get(None if key == "planned" else key, STATE_COLOURS[None])
        out.append(f"  classDef {_class(key)} fill:{fill},stroke:{border},color:#000")
    return "\n".join(out) + "\n"
