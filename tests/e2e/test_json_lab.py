"""`--json` and `publish --dry-run` against a running app: real QEMU guests on two namespace hosts.

One small lab is published for the whole module (two busybox guests, one blank disk each) and
taken through a dry run of its own blueprint (no change, exit 0), a dry run of a changed one
(a VM moved with its disk, a host removed, a restart, a network, a service and a firewall
rule; exit 10, and nothing on the hosts or in the state touched), that change published for
real (after which a dry run finds nothing left), stop/start, a snapshot published again, and
destroy, with every --json document validated against its schema. Everything is destroyed at
the end, with a check that nothing is left behind, even when a test fails.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from conftest import GUEST, Ravel, force_cleanup, leftovers, qemu_pids
from ravel.paths import paths
from tests.jsonschemas import parsed

PID = os.getpid()
APP = f"js{PID}"
COPY = f"jsc{PID}"

BLUEPRINT = f"""\
name: jsonlab
networks:
  back: {{subnet: 10.51.0.0/24, gateway: 10.51.0.1}}
defaults:
  memory: 192MiB
  disks: [{{size: 32MiB}}]
  boot: {{kernel: {GUEST}/vmlinuz, initrd: {GUEST}/initrd.img, cmdline: console=ttyS0 quiet}}
vms:
  a:
    nics: [{{network: back, ip: 10.51.0.11}}]
    services: [{{port: 80}}]
  b:
    nics: [{{network: back, ip: 10.51.0.12}}]
placement:
  host_types: [local-small]
  anti_affinity: [[a, b]]
"""
# no anti-affinity: both VMs fit one host, so one moves (with its disk) and a host goes;
# `a` gets more memory (a restart), loses its service; a network and a firewall rule come
CHANGED = (BLUEPRINT.replace("  anti_affinity: [[a, b]]\n", "")
           .replace("    services: [{port: 80}]\n", "    memory: 224MiB\n")
           .replace("  back: {subnet: 10.51.0.0/24, gateway: 10.51.0.1}\n",
                    "  back: {subnet: 10.51.0.0/24, gateway: 10.51.0.1}\n"
                    "  side: {subnet: 10.52.0.0/24, gateway: 10.52.0.1}\n"
                    "firewall:\n  allow:\n    - {from: back, to: side, protocol: tcp, ports: [22]}\n"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    (home / "lab.yaml").write_text(BLUEPRINT)
    (home / "changed.yaml").write_text(CHANGED)
    r = Ravel(home)
    try:
        p = r("publish", str(home / "lab.yaml"), "--name", APP, "--wait", "--timeout", "240", "--json")
        yield r, parsed(p.stdout, "publish")
    finally:
        for app in (APP, COPY):
            r("destroy", app, "--yes", check=False)
        left = leftovers(APP, home) + leftovers(COPY, home)
        for app in (APP, COPY):
            force_cleanup(app, home)
        assert not left, f"left behind: {left}"


def dry_run(r: Ravel, file: str) -> tuple[int, dict]:
    p = r("publish", str(r.home / file), "--name", APP, "--dry-run", "--json", check=False)
    assert p.returncode in (0, 10), f"{p.returncode}\n{p.stdout}\n{p.stderr}"
    doc = parsed(p.stdout, "dry-run")
    assert doc["changed"] == (p.returncode == 10)
    return p.returncode, doc


def touched(r: Ravel) -> dict:
    """What a dry run must leave as it is: the state's rows, the files ravel and the hosts'
    runtimes keep for the app (names, and the content of those the runtime writes), QEMU."""
    home = paths_for(r)
    db = sqlite3.connect(home.state / "state.db")
    try:
        rows = "\n".join(db.iterdump())
    finally:
        db.close()
    files = {}
    for root in (home.app_run(APP), home.app_data(APP), home.state / "keys"):
        for f in sorted(root.rglob("*")):
            kept = f.suffix in (".argv", ".json", ".pyz", ".iso", ".conf") and f.is_file()
            files[str(f)] = f.read_bytes() if kept else None
    return {"state": rows, "files": files, "qemu": qemu_pids(APP)}


def paths_for(r: Ravel):
    old = os.environ.get("RAVEL_HOME")
    os.environ["RAVEL_HOME"] = str(r.home)
    try:
        return paths()
    finally:
        if old is None:
            del os.environ["RAVEL_HOME"]
        else:
            os.environ["RAVEL_HOME"] = old


def test_publish_document(lab):
    r, doc = lab
    assert doc["app"] == APP and doc["provider"] == "local" and doc["from_snapshot"] is None
    assert doc["changed"] > 0 and doc["ready_s"] is not None
    assert sorted(v["name"] for v in doc["vms"]) == ["a", "b"]
    assert all(v["state"] == "running" and v["ready"] == "ready" for v in doc["vms"])
    assert len(doc["plan"]["hosts"]) == 2
    assert [v for v in doc["vms"] if v["name"] == "a"][0]["services"][0].endswith("->80/tcp")


def test_status_and_list_documents(lab):
    r, _ = lab
    st = parsed(r("status", APP, "--json").stdout, "status")
    assert sorted(v["name"] for v in st[APP]) == ["a", "b"]
    apps = parsed(r("list", "--json").stdout, "list")
    assert [(a["name"], a["hosts"], a["vms"]) for a in apps] == [(APP, 2, 2)]


def test_dry_run_of_the_running_blueprint_changes_nothing(lab):
    r, _ = lab
    rc, doc = dry_run(r, "lab.yaml")
    assert rc == 0 and doc["changes"] == [] and doc["exists"] is True
    assert [(h["name"], h["status"], h["actions"]) for h in doc["hosts"]] == [
        ("host-1", "existing", []), ("host-2", "existing", [])]
    p = r("publish", str(r.home / "lab.yaml"), "--name", APP, "--dry-run")
    assert p.returncode == 0 and f"{APP}: no changes" in p.stdout


def test_dry_run_of_a_changed_blueprint_says_what_and_touches_nothing(lab):
    r, _ = lab
    before = touched(r)
    rc, doc = dry_run(r, "changed.yaml")
    assert rc == 10
    assert touched(r) == before
    by = {(c["kind"], c["name"]): c for c in doc["changes"]}
    [moved] = [c for c in doc["changes"] if c["action"] == "move"]
    assert moved["kind"] == "vm" and moved["host"] == "host-1" and moved["from"] == "host-2"
    assert len(moved["disks"]) == 1 and moved["disks"][0].endswith(f"/host-2/{moved['name']}-disk0.qcow2")
    assert by[("host", "host-2")]["action"] == "remove"
    if moved["name"] == "b":  # `a` stays where it was: restarted for its new memory size
        assert by[("vm", "a")]["action"] == "restart" and by[("vm", "a")]["detail"] == "configuration changed"
    assert by[("network", "side")]["action"] == "add"
    assert by[("service", "a:80/tcp")]["action"] == "remove"
    assert by[("firewall_rule", "allow back -> side tcp 22")]["action"] == "add"
    assert {h["name"]: h["status"] for h in doc["hosts"]} == {"host-1": "existing", "host-2": "removed"}
    p = r("publish", str(r.home / "changed.yaml"), "--name", APP, "--dry-run", check=False)
    assert p.returncode == 10 and "move" in p.stdout and "host-2" in p.stdout


def test_publishing_the_change_leaves_nothing_for_a_dry_run(lab):
    r, _ = lab
    doc = parsed(r("publish", str(r.home / "changed.yaml"), "--name", APP, "--json").stdout, "publish")
    assert doc["changed"] > 0 and {v["host"] for v in doc["vms"]} == {"host-1"}
    rc, dry = dry_run(r, "changed.yaml")
    assert rc == 0, dry["changes"]


def test_stop_and_start_documents(lab):
    r, _ = lab
    doc = parsed(r("stop", APP, "b", "--json").stdout, "running")
    assert doc["action"] == "stop" and doc["targets"] == ["b"] and doc["changed"] > 0
    assert {v["name"]: v["state"] for v in doc["vms"]} == {"a": "running", "b": "stopped"}
    rc, dry = dry_run(r, "changed.yaml")  # a publish starts every VM
    assert rc == 10 and [(c["kind"], c["name"], c["action"]) for c in dry["changes"]] == [("vm", "b", "start")]
    doc = parsed(r("start", APP, "--json").stdout, "running")
    assert doc["action"] == "start" and doc["targets"] == ["a", "b"]
    assert {v["name"]: v["state"] for v in doc["vms"]} == {"a": "running", "b": "running"}


def test_snapshot_documents_and_publish_from(lab):
    r, _ = lab
    snap = parsed(r("snapshot", APP, "--name", f"s{PID}", "--json").stdout, "snapshot")
    assert snap["name"] == f"s{PID}" and snap["app"] == APP and snap["vms"] == 2 and snap["memory"] is False
    listed = parsed(r("snapshots", "--json").stdout, "snapshots-list")
    assert [s["name"] for s in listed] == [f"s{PID}"]
    manifest = parsed(r("snapshots", "show", f"s{PID}", "--json").stdout, "snapshot-manifest")
    assert sorted(v["name"] for v in manifest["vms"]) == ["a", "b"]

    doc = parsed(r("publish", "--from", f"s{PID}", "--name", COPY, "--json").stdout, "publish")
    assert doc["app"] == COPY and doc["from_snapshot"] == f"s{PID}" and len(doc["vms"]) == 2
    gone = parsed(r("destroy", COPY, "--yes", "--json").stdout, "destroy")
    assert gone == {"app": COPY, "destroyed": True, "hosts_removed": 1}

    assert parsed(r("snapshots", "rm", f"s{PID}", "--json").stdout, "snapshots-rm")["removed"] == f"s{PID}"
    gc = parsed(r("store", "gc", "--json").stdout, "store-gc")
    assert gc["removed"] and gc["freed_bytes"] > 0


def test_errors_in_a_running_app_are_documents(lab):
    r, _ = lab
    p = r("stop", APP, "nosuchvm", "--json", check=False)
    assert p.returncode == 7
    assert "nosuchvm" in parsed(p.stdout, "error")["error"]["message"]
    p = r("publish", str(r.home / "changed.yaml"), "--name", APP, "--transport", "ssh", "--dry-run", "--json",
          check=False)
    assert p.returncode == 7
    assert parsed(p.stdout, "error")["error"]["hint"].startswith("publish without --transport")


def test_destroy_document(lab):
    r, _ = lab
    doc = parsed(r("destroy", APP, "--yes", "--json").stdout, "destroy")
    assert doc == {"app": APP, "destroyed": True, "hosts_removed": 1}
    assert not leftovers(APP, Path(r.home))
