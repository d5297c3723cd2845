"""`ravel graph`: the pure graph model and its renderings. Every example blueprint gives valid
SVG (parsed) with each VM and network in it; DOT and Mermaid are compared with golden texts
(tests/unit/golden/; RAVEL_UPDATE_GOLDEN=1 rewrites them, then read the diff)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ravel.graph.dot import quote, to_dot
from ravel.graph.mermaid import to_mermaid
from ravel.graph.model import HostRow, Live, VmRow, from_app_plan, from_records, look, with_live
from ravel.graph.source import is_file, plan_graph
from ravel.graph.svg import to_svg
from ravel.plan.app import resolve_app, sketch_vnis
from ravel.plan.catalogue import Machine
from ravel.plan.plan import make_plan
from ravel.run.blueprints import read_blueprint
from ravel.run.capacity import catalogue_for
from tests.jsonschemas import check, parsed

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
BLUEPRINTS = sorted((ROOT / "blueprints").glob("*.yaml"))
SVG = "{http://www.w3.org/2000/svg}"
MACHINE = Machine(cores=2, memory_mib=24105)  # the goldens' machine: not whatever runs the test


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("RAVEL_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden {path}: run with RAVEL_UPDATE_GOLDEN=1 and read it"
    assert text == path.read_text(), f"{name} differs from its golden (RAVEL_UPDATE_GOLDEN=1 to accept)"


def demo_plan_graph():
    bp = read_blueprint(str(ROOT / "blueprints/demo.yaml"))
    plan = make_plan(bp, catalogue_for("local", MACHINE))
    return from_app_plan(resolve_app(bp, bp.name, plan, sketch_vnis(bp)))


def demo_app_graph():
    """The demo app as the state and `ravel status` would show it: web-2 stopped, db booting."""
    bp = read_blueprint(str(ROOT / "blueprints/demo.yaml"))
    hosts = [HostRow("host-1", "local-small", "tcg"), HostRow("host-2", "local-small", "tcg"),
             HostRow("host-3", "local-small", "tcg")]
    vms = [VmRow("db", "host-1", "running", ["10.20.0.21/24"], ["52:54:00:00:00:01"]),
           VmRow("web-1", "host-2", "running", ["10.10.0.11/24", "10.20.0.11/24"],
                 ["52:54:00:00:00:02", "52:54:00:00:00:03"]),
           VmRow("web-2", "host-3", "stopped", ["10.10.0.12/24", ""], ["52:54:00:00:00:04", "52:54:00:00:00:05"]),
           VmRow("hv", "host-1", "running", ["10.10.0.31/24"], ["52:54:00:00:00:06"])]
    g = from_records(bp, "demo", hosts, vms)
    return with_live(g, {"db": Live("running", "booting", (), 12.0), "web-1": Live("running", "ready"),
                         "web-2": Live("stopped", "-"), "hv": Live("crashed", "-")})


def svg_ids(text: str) -> tuple[ET.Element, set[str]]:
    root = ET.fromstring(text)  # raises on anything that is not well-formed XML
    assert root.tag == SVG + "svg"
    return root, {e.get("id") for e in root.iter() if e.get("id")}


@pytest.mark.parametrize("path", BLUEPRINTS, ids=[p.stem for p in BLUEPRINTS])
def test_every_example_blueprint_is_valid_svg_with_every_vm_and_network(path):
    notes: list[str] = []
    g = plan_graph(str(path), on_unplaced=notes.append)
    bp = read_blueprint(str(path))
    root, ids = svg_ids(to_svg(to_dot(g)))
    text = " ".join(t.text or "" for t in root.iter(SVG + "text"))
    for vm in bp.vms:
        assert f"vm-{vm.name}" in ids, vm.name
        assert vm.name in text
    for net in bp.networks:
        assert f"net-{net.name}" in ids, net.name
        assert str(net.subnet) in text
    # every NIC is an edge
    assert sum(len(vm.nics) for vm in bp.vms) == sum(1 for i in ids if i.startswith("nic-"))
    if not notes:  # placed: each host a group holding its VMs
        assert {f"host-{h.name}" for h in g.hosts} <= ids


def test_fifty_vms_stay_readable():
    """scale-50: a host's VMs in a grid, not one row of 50 boxes: the picture is not a strip."""
    g = plan_graph(str(ROOT / "blueprints/scale-50.yaml"))
    root, _ = svg_ids(to_svg(to_dot(g)))
    w, h = (float(root.get(k).removesuffix("pt")) for k in ("width", "height"))
    assert max(w, h) / min(w, h) < 6, (w, h)


def test_demo_plan_dot_and_mermaid_goldens():
    g = demo_plan_graph()
    golden("demo-plan.dot", to_dot(g))
    golden("demo-plan.mmd", to_mermaid(g))


def test_demo_app_dot_and_mermaid_goldens():
    g = demo_app_graph()
    golden("demo-app.dot", to_dot(g))
    golden("demo-app.mmd", to_mermaid(g))


def test_live_state_changes_only_the_states():
    g = demo_app_graph()
    assert [look(v) for v in g.vms] == ["running", "stopped", "booting", "crashed"]
    web2 = g.vm("web-2")
    assert web2.nics[1].ip is None and web2.nics[0].model == "vmxnet3"
    again = with_live(g, {"web-2": Live("running", "ready", ("127.0.0.1:40000->80/tcp",))})
    assert again.vm("web-2").state == "running" and again.vm("web-2").services == ("127.0.0.1:40000->80/tcp",)
    assert again.vm("db") == g.vm("db")
    assert json.loads(json.dumps(g.to_dict()))["vms"][0]["name"] == "web-1"


def test_unplaceable_blueprint_is_drawn_without_hosts():
    notes: list[str] = []
    g = plan_graph(str(ROOT / "blueprints/ci-lab.yaml"), provider="local", on_unplaced=notes.append) \
        if os.cpu_count() and os.cpu_count() < 4 else None
    if g is None:
        pytest.skip("this machine can hold ci-lab's 4-vCPU runner")
    assert notes and not g.hosts and all(v.host is None for v in g.vms)
    assert 'cluster_-' in to_dot(g) and "not placed" in to_mermaid(g)


def test_quoting():
    assert quote('a "b"\\\nc') == '"a \\"b\\"\\\\\\nc"'
    assert is_file("lab.yaml") and is_file("x/lab") and not is_file("demo")


def test_cli_formats(tmp_path):
    env = dict(os.environ, RAVEL_HOME=str(tmp_path))
    run = lambda *a: subprocess.run([sys.executable, "-m", "ravel", "graph", *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=60, env=env, cwd=ROOT)
    p = run("blueprints/demo.yaml", "--format", "mermaid")
    assert p.returncode == 0 and p.stdout.startswith("flowchart"), p.stderr
    p = run("blueprints/demo.yaml", "--format", "json")
    assert {v["name"] for v in parsed(p.stdout, "graph")["vms"]} == {"web-1", "web-2", "db", "hv"}
    check(demo_app_graph().to_dict(), "graph")
    out = tmp_path / "demo.svg"
    p = run("blueprints/demo.yaml", "-o", str(out))
    assert p.returncode == 0, p.stderr
    svg_ids(out.read_text())
    p = run("nosuchapp")
    assert p.returncode == 7 and "nosuchapp" in p.stderr and "Traceback" not in p.stderr
    p = run("missing.yaml")
    assert p.returncode == 2 and "no such file" in p.stderr
