"""The CLI as a user runs it: a real process, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["validate", "plan", "schema", "publish", "status", "list", "console", "logs", "stop", "start", "destroy",
            "gc", "doctor"]


def ravel(*args: str, home: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAVEL_HOME=str(home or "/nonexistent-ravel-home"), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "ravel", *args], capture_output=True, text=True, timeout=60,
                          env=env, input=stdin, cwd=ROOT)


def no_traceback(p: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd):
    p = ravel(cmd, "--help")
    assert p.returncode == 0, p.stderr
    assert "Usage:" in p.stdout and len(p.stdout) > 100


def test_version():
    p = ravel("--version")
    assert p.returncode == 0 and p.stdout.startswith("ravel ")


def test_plan_json_shape():
    p = ravel("plan", "blueprints/demo.yaml", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert set(data) == {"blueprint", "provider", "optimize", "cost_per_hour", "lower_bound_per_hour", "optimal",
                         "gap", "machine", "memory_mib", "max_mtu", "notes", "hosts", "vms"}
    assert data["blueprint"] == "demo" and data["provider"] == "local" and data["optimize"] == "cost"
    assert len(data["hosts"]) >= 3 and len(data["vms"]) >= 4
    # local host types come from this machine, read at plan time and recorded
    assert data["machine"] == {"cores": len(os.sched_getaffinity(0)), "memory_mib": meminfo_mib("MemTotal")}
    assert data["optimal"] is True and data["gap"] == 0
    for h in data["hosts"]:
        assert set(h) == {"name", "type", "cpus", "memory_mib", "hourly_cost", "accel", "reserve", "ksm", "vms"}
        assert h["accel"] in ("kvm", "tcg")
        assert h["reserve"] == {"cpus": 0, "memory_mib": 64}
    placed = [vm for h in data["hosts"] for vm in h["vms"]]
    assert sorted(placed) == sorted(data["vms"])
    for name, vm in data["vms"].items():
        assert set(vm) == {"cpus", "memory_mib", "host"}
        assert name in next(h for h in data["hosts"] if h["name"] == vm["host"])["vms"]
    assert data["cost_per_hour"] >= data["lower_bound_per_hour"] > 0


def meminfo_mib(key: str) -> int:
    line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) // 1024


def test_plan_table_and_providers():
    for provider in ("aws", "gcp"):
        p = ravel("plan", "blueprints/vsphere-lab.yaml", "--provider", provider)
        assert p.returncode == 0, p.stderr
        assert "cost/bound" in p.stdout and "kvm" in p.stdout
    p = ravel("plan", "blueprints/ci-lab.yaml", "-p", "aws", "--optimize", "cost", "--json")
    assert json.loads(p.stdout)["optimize"] == "cost"


def test_validate_ok_and_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nvms:\n  a: {cpus: 0, memry: 1}\n")
    p = ravel("validate", "blueprints/demo.yaml", str(bad))
    assert p.returncode == 2
    no_traceback(p)
    assert "blueprints/demo.yaml: ok" in p.stdout
    assert f"{bad}:3:13: vms.a.cpus: must be positive, got 0" in p.stderr
    assert f"{bad}:3:16: vms.a.memry: unknown key 'memry' (did you mean 'memory'?)" in p.stderr


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02binary", b"[1, 2", b"- just\n- a list\n"])
def test_validate_bad_files(tmp_path, content):
    f = tmp_path / "f.yaml"
    f.write_bytes(content)
    p = ravel("validate", str(f))
    assert p.returncode == 2
    no_traceback(p)
    assert p.stderr.startswith(str(f))


def test_missing_file_and_vm_too_big(tmp_path):
    p = ravel("validate", str(tmp_path / "nope.yaml"))
    assert p.returncode == 2 and "nope.yaml: no such file" in p.stderr
    big = tmp_path / "big.yaml"
    huge = meminfo_mib("MemTotal") // 1024 + 1  # GiB: more than this machine has
    big.write_text(f"name: big\nvms:\n  huge: {{cpus: 2, memory: {huge}GiB}}\n")
    # without a provider only the blueprint is checked; with one, that its VMs fit the host types
    assert ravel("validate", str(big)).returncode == 0
    p = ravel("validate", str(big), "--provider", "local")
    assert p.returncode == 2
    assert f"{big}:3:3: vms.huge: vm \"huge\"" in p.stderr and "local-machine" in p.stderr, p.stderr
    assert ravel("validate", str(big), "--provider", "aws").returncode == 0
    p = ravel("plan", str(big))
    assert p.returncode == 2 and "vms.huge" in p.stderr


def test_unknown_host_type_did_you_mean(tmp_path):
    f = tmp_path / "h.yaml"
    f.write_text("name: h\nvms:\n  a: {}\nplacement:\n  host_types: [m8i.larg]\n")
    p = ravel("validate", str(f), "-p", "aws")
    assert p.returncode == 2
    assert f"{f}:5:16: placement.host_types[0]:" in p.stderr and "m8i.large" in p.stderr


def test_bad_provider_is_a_usage_error():
    p = ravel("plan", "blueprints/demo.yaml", "--provider", "azure")
    assert p.returncode == 2 and "unknown provider 'azure'" in p.stderr
    no_traceback(p)


def test_schema_is_json_schema():
    p = ravel("schema")
    data = json.loads(p.stdout)
    assert data["title"] == "ravel blueprint"
    assert {"name", "vms", "networks", "placement"} <= set(data["properties"])


def test_status_of_unknown_app(tmp_path):
    p = ravel("status", "ghost", home=tmp_path)
    assert p.returncode == 7 and "no app named 'ghost'" in p.stderr
    no_traceback(p)
    p = ravel("destroy", "ghost", "--yes", home=tmp_path)
    assert p.returncode == 7
    p = ravel("list", home=tmp_path)
    assert p.returncode == 0


def test_bad_app_name_is_a_usage_error(tmp_path):
    p = ravel("publish", "blueprints/demo.yaml", "--name", "BAD_NAME", home=tmp_path)
    assert p.returncode == 2 and "'BAD_NAME' is not a valid app name" in p.stderr
    no_traceback(p)


def test_gc_is_for_clouds_only():
    p = ravel("gc", "--provider", "local")
    assert p.returncode == 2 and "'local' is not a cloud provider" in p.stderr
    no_traceback(p)


@pytest.mark.parametrize("value", ["garbage", "10.0.0.0/33", "203.0.113.7/"])
def test_a_bad_ssh_from_is_bad_input_before_anything_is_recorded(tmp_path, value):
    # it used to reach the cloud first (a credentials error, or an app left "publishing")
    env_free = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    p = subprocess.run([sys.executable, "-m", "ravel", "publish", "blueprints/ci-lab.yaml", "--provider", "aws",
                        "--name", "sshfrom", "--ssh-from", value], capture_output=True, text=True, timeout=60,
                       cwd=ROOT, env=dict(os.environ, RAVEL_HOME=str(tmp_path), COLUMNS="200",
                                          AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_CONFIG_FILE="/nonexistent",
                                          AWS_SHARED_CREDENTIALS_FILE="/nonexistent", **env_free))
    no_traceback(p)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [f"error: Invalid value: --ssh-from {value!r} is not an address or "
                                             "CIDR (e.g. 203.0.113.7/32)"]
    assert "sshfrom" not in ravel("list", "--json", home=tmp_path).stdout


def test_publish_from_a_snapshot_keeps_the_cloud_options(tmp_path, monkeypatch):
    # --ssh-from and --host-image were dropped on the way from `publish --from` to the publish
    from ravel.paths import paths
    from ravel.run import lab as lab_mod
    from ravel.run import publish as pipeline
    from ravel.snapshot.restore import Restoration

    seen = {}
    monkeypatch.setattr(pipeline, "restore_snapshot",
                        lambda p, name, url, emit=None, check=None: Restoration(tmp_path / f"{name}.yaml"))
    monkeypatch.setattr(pipeline, "publish", lambda ctx, path, **kw: seen.update(kw))
    lab = lab_mod.Lab(paths({"RAVEL_HOME": str(tmp_path)}))
    try:
        lab.publish_snapshot("snap", provider_name="aws", ssh_from="203.0.113.7/32", host_image="ami-0123")
    finally:
        lab.close()
    assert seen["options"].ssh_from == "203.0.113.7/32" and seen["options"].image == "ami-0123"


def test_ctrl_c_while_the_cli_loads_is_a_quiet_interrupt():
    # a Ctrl-C in the first few hundred ms (rich and typer still importing) printed a traceback
    code = ("import os, signal, sys, time; sys.argv[0] = 'ravel'; import ravel.cli; "
            "os.kill(os.getpid(), signal.SIGINT); time.sleep(5); print('not interrupted')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    no_traceback(p)
    assert (p.returncode, p.stderr, p.stdout) == (130, "interrupted\n", "")
    # once main() runs, Ctrl-C is Python's KeyboardInterrupt again, which the commands handle
    code = ("import signal, sys; sys.argv[0] = 'ravel'; from ravel.cli import app; "
            "sys.argv[1:] = ['--version']\ntry: app.main()\nexcept SystemExit: pass\n"
            "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.stdout.splitlines()[-1] == "True", p.stdout + p.stderr


def test_an_unknown_host_type_names_the_provider_once():
    p = ravel("validate", "blueprints/demo.yaml", "--provider", "aws")
    no_traceback(p)
    line = next(x for x in (p.stdout + p.stderr).splitlines() if "unknown host type" in x)
    assert p.returncode == 2 and line.endswith("unknown host type 'local-small' for provider aws"), line
