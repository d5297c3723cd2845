"""`--json`: every reporting command has it, and what it prints (errors included) is one
document valid against its schema in docs/schemas/, with the exit status of the human form.
The commands that need a running app are checked in tests/e2e/test_json_lab.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from jsonschema import Draft202012Validator

from ravel.cli.app import app
from ravel.errors import Problem
from tests.jsonschemas import SCHEMAS, parsed, schemas
from tests.unit.importfixtures import make_vmdk

ROOT = Path(__file__).resolve().parents[2]

# every command that reports something -> the schemas of what its --json prints
REPORTING = {
    "publish": ("publish", "dry-run"),
    "status": ("status",),
    "netem": ("netem",),
    "link": ("netem",),
    "list": ("list",),
    "plan": ("plan",),
    "validate": ("validate",),
    "stop": ("running",),
    "start": ("running",),
    "destroy": ("destroy",),
    "snapshot": ("snapshot",),
    "snapshots": ("snapshots-list", "snapshot-manifest", "snapshots-rm"),
    "store gc": ("store-gc",),
    "store verify": ("store-verify",),
    "import": ("import",),
    "gc": ("gc",),
    "cp": ("cp",),
    "run": ("run",),
    "extend": ("extend",),
    "doctor": ("doctor",),
}
# the others, and why they have no --json (a new command must be added to one of the two)
NOT_REPORTING = {
    "schema": "prints a JSON Schema document itself",
    "console": "an interactive serial console",
    "logs": "the guest's console bytes, as it wrote them",
    "ssh": "OpenSSH's session; output and exit status pass through",
    "proxy": "a byte stream for OpenSSH's ProxyCommand",
    "exec": "the guest command's output and exit status pass through",
    "vnc": "forwards until Ctrl-C; prints the URL to connect to",
    "ssh-config": "its output is an OpenSSH config file",
    "inventory": "its output is an Ansible inventory (--format json for JSON)",
    "capture": "its output is a pcap or pcapng file",
    "graph": "its output is a picture (--format json for the graph as JSON)",
    "ui": "a web server until Ctrl-C; prints the URL to open",
}


def leaf_commands() -> dict[str, object]:
    """Every command of the typer app, by its full name ("store gc"), groups walked."""
    found: dict[str, object] = {}

    def walk(cmd: object, prefix: str) -> None:
        subs = getattr(cmd, "commands", None)
        if subs is None:
            found[prefix] = cmd
            return
        for name, sub in subs.items():
            walk(sub, f"{prefix} {name}".strip())

    walk(typer.main.get_command(app), "")
    return found


def ravel(*args: str, home: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAVEL_HOME=str(home), COLUMNS="200")
    p = subprocess.run([sys.executable, "-m", "ravel", *args], capture_output=True, text=True, timeout=60,
                       env=env, input=stdin if stdin is not None else "", cwd=ROOT)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def failed(p: subprocess.CompletedProcess[str], code: int) -> dict:
    """An error document on stdout, with `code` as both its exit status and its error.code; the
    human lines still on stderr."""
    assert p.returncode == code, f"{p.returncode}\n{p.stdout}\n{p.stderr}"
    doc = parsed(p.stdout, "error")
    assert doc["error"]["code"] == code
    err = doc["error"]
    lines = [str(Problem(**q)) for q in err.get("problems") or ()] or [err["message"]]
    assert all(line in p.stderr for line in lines), p.stderr
    return err


# -- every command --------------------------------------------------------------------------------

def test_every_reporting_command_accepts_json():
    commands = leaf_commands()
    unknown = sorted(set(commands) - set(REPORTING) - set(NOT_REPORTING))
    assert not unknown, (f"new commands {unknown}: give them --json (a document in docs/schemas/ and "
                         "docs/json.md) and list them in REPORTING, or say in NOT_REPORTING why not")
    assert not (set(REPORTING) | set(NOT_REPORTING)) - set(commands), "a listed command no longer exists"
    for name in REPORTING:
        flag = [p for p in commands[name].params if "--json" in p.opts]
        assert flag, f"`ravel {name}` has no --json"
        # exits.handled finds it by this name: its failures are then error documents too
        assert flag[0].name == "as_json", f"`ravel {name}`: call the --json parameter as_json"
    for name in NOT_REPORTING:
        opts = {o for p in commands[name].params for o in p.opts}
        assert "--json" not in opts, f"`ravel {name}` has --json: move it to REPORTING"


def test_every_schema_is_valid_documented_and_used():
    docs = (ROOT / "docs" / "json.md").read_text()
    # graph: `ravel graph --format json`, a format rather than --json (tests/unit/test_graph.py)
    used = {s for names in REPORTING.values() for s in names} | {"error", "vm-status", "expiry", "graph"}
    assert set(schemas()) == used, "a schema in docs/schemas/ that no command prints, or one missing"
    for name, schema in schemas().items():
        Draft202012Validator.check_schema(schema)
        assert schema["$id"].endswith(f"/{name}.json")
        assert f"schemas/{name}.json" in docs, f"docs/json.md does not name {name}.json"
    assert SCHEMAS.is_dir()


# -- documents of commands that need no running app -----------------------------------------------

def test_doctor(tmp_path):
    p = ravel("doctor", "--json", home=tmp_path)
    doc = parsed(p.stdout, "doctor")
    assert p.returncode == (0 if doc["ok"] else 9), p.stderr
    assert {"root", "qemu", "kvm"} <= {c["name"] for c in doc["checks"]}


def test_plan_and_validate(tmp_path):
    p = ravel("plan", "blueprints/demo.yaml", "--json", home=tmp_path)
    assert p.returncode == 0, p.stderr
    assert parsed(p.stdout, "plan")["blueprint"] == "demo"
    p = ravel("plan", "blueprints/demo.yaml", "--budget", "1", "--json", home=tmp_path)
    assert parsed(p.stdout, "plan")["budget"]["amount"] == 1
    p = ravel("validate", "blueprints/demo.yaml", "blueprints/services-lab.yaml", "--json", home=tmp_path)
    assert p.returncode == 0, p.stderr
    assert [v["file"] for v in parsed(p.stdout, "validate")["valid"]] == ["blueprints/demo.yaml",
                                                                        "blueprints/services-lab.yaml"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nvms:\n  a: {cpus: 0}\n")
    err = failed(ravel("validate", "blueprints/demo.yaml", str(bad), "--json", home=tmp_path), 2)
    assert err["kind"] == "BlueprintError"
    assert err["problems"] == [{"file": str(bad), "line": 3, "column": 13, "path": "vms.a.cpus",
                                "message": "must be positive, got 0"}]
    err = failed(ravel("plan", str(tmp_path / "none.yaml"), "--json", home=tmp_path), 2)
    assert err["problems"][0]["message"] == "no such file"


@pytest.mark.parametrize("args", [
    ["nosuchcommand", "--json"],
    ["plan", "--json"],  # a missing argument
    ["plan", "blueprints/demo.yaml", "--json", "--provider", "nowhere"],
    ["status", "--json", "--no-such-option"],
    ["gc", "--provider", "local", "--json"],
    ["publish", "--json"],  # neither FILE nor --from
    ["publish", "blueprints/demo.yaml", "--from", "s", "--json"],
    ["publish", "--from", "s", "--dry-run", "--json"],
    ["snapshots", "frobnicate", "--json"],
])
def test_usage_errors_are_documents_with_exit_2(tmp_path, args):
    err = failed(ravel(*args, home=tmp_path), 2)
    assert err["kind"] == "usage"


def test_json_after_a_double_dash_belongs_to_the_guest_command(tmp_path):
    # `ravel exec APP VM -- cmd --json`: the human form, not a document
    p = ravel("exec", "nosuchapp", "vm", "--", "cat", "--json", home=tmp_path)
    assert p.returncode == 7 and p.stdout == ""


@pytest.mark.parametrize("args", [
    ["status", "nosuchapp"], ["stop", "nosuchapp"], ["start", "nosuchapp", "vm"], ["destroy", "nosuchapp", "-y"],
    ["snapshot", "nosuchapp"], ["cp", "nosuchapp:vm:/etc/hostname", "x"],
])
def test_state_errors_are_documents_with_exit_7(tmp_path, args):
    err = failed(ravel(*args, "--json", home=tmp_path), 7)
    assert err["kind"] == "StateError" and "nosuchapp" in err["message"]


def test_snapshot_store_documents(tmp_path):
    assert parsed(ravel("snapshots", "--json", home=tmp_path).stdout, "snapshots-list") == []
    p = ravel("store", "gc", "--json", home=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = parsed(p.stdout, "store-gc")
    assert doc["removed"] == [] and doc["dry_run"] is False and doc["store"].startswith("file://")
    p = ravel("store", "verify", "--json", home=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = parsed(p.stdout, "store-verify")
    assert doc["problems"] == [] and doc["layers"] == 0 and doc["repair"] is False
    (tmp_path / "data" / "store" / "manifests").mkdir(parents=True)
    (tmp_path / "data" / "store" / "manifests" / "bad.json").write_text("{")
    p = ravel("store", "verify", "--json", home=tmp_path)
    assert p.returncode == 8, p.stderr
    doc = parsed(p.stdout, "store-verify")
    assert len(doc["problems"]) == 1 and "not a valid snapshot manifest" in doc["problems"][0]
    for args in (["snapshots", "show", "nothing"], ["snapshots", "rm", "nothing"], ["publish", "--from", "nothing"]):
        err = failed(ravel(*args, "--json", home=tmp_path), 8)
        assert "no snapshot named 'nothing'" in err["message"]


def test_import(tmp_path):
    disk = make_vmdk(tmp_path / "web.vmdk")
    p = ravel("import", str(disk), "--json", home=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = parsed(p.stdout, "import")
    assert doc["output"] is None and list(doc["vms"]) == ["web"]
    assert doc["vms"]["web"]["disks"] == [{"bus": "ide", "image": str(disk)}]
    assert doc["notes"] and doc["notes"][0] in p.stderr  # notes: in the document, and on stderr
    out = tmp_path / "web.yaml"
    p = ravel("import", str(disk), "-o", str(out), "--json", home=tmp_path)
    assert p.returncode == 0, p.stderr
    assert parsed(p.stdout, "import")["output"] == str(out) and out.read_text().startswith(("name:", "#"))
    err = failed(ravel("import", str(tmp_path / "missing.ova"), "--json", home=tmp_path), 2)
    assert "missing.ova" in err["message"] + json.dumps(err.get("problems"))


def test_dry_run_of_a_new_app_lists_everything_and_writes_nothing(tmp_path):
    home = tmp_path / "home"
    p = ravel("publish", "blueprints/services-lab.yaml", "--name", "fresh", "--dry-run", "--json", home=home)
    assert p.returncode == 10, p.stderr
    doc = parsed(p.stdout, "dry-run")
    assert doc["exists"] is False and doc["changed"] is True and doc["app"] == "fresh"
    kinds = {(c["kind"], c["action"]) for c in doc["changes"]}
    assert {("host", "create"), ("vm", "create"), ("network", "add")} <= kinds
    assert all(h["status"] == "new" and h["actions"] == [] for h in doc["hosts"])
    assert ("service", "add") in kinds and ("firewall_rule", "add") in kinds
    # nothing recorded: the app is unknown afterwards, and no namespace was made for it
    assert json.loads(ravel("list", "--json", home=home).stdout) == []
    assert not [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if ns.startswith("rv-fresh-")]
    # the table says the same, and the exit status is the same
    p = ravel("publish", "blueprints/services-lab.yaml", "--name", "fresh", "--dry-run", home=home)
    assert p.returncode == 10 and re.search(r"fresh: a new app; publishing it would make \d+ changes", p.stdout)
