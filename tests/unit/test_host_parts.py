"""Host runtime pieces that need no root: stdlib-only imports, zipapp, CLI contract, QMP client,
pid identity, the KVM probe's bounds."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from ravel.host import kvm, proc
from ravel.host.bundle import build_zipapp

HOST_DIR = Path(__file__).resolve().parents[2] / "ravel" / "host"
REPO = HOST_DIR.parents[1]


def test_runtime_imports_only_the_standard_library_and_itself():
    stdlib = set(getattr(sys, "stdlib_module_names", ()))
    assert stdlib, "needs Python >= 3.10 to know the stdlib module names"
    for path in sorted(HOST_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in stdlib, f"{path.name}: import {alias.name}"
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    assert node.module.split(".")[0] in stdlib, f"{path.name}: from {node.module}"
                else:
                    assert node.level == 1, f"{path.name}: relative import leaves ravel.host"


def test_zipapp_is_deterministic_and_runs_without_site_packages(tmp_path):
    a, b = tmp_path / "a.pyz", tmp_path / "b.pyz"
    build_zipapp(a)
    build_zipapp(str(b))
    assert a.read_bytes() == b.read_bytes()
    assert os.access(a, os.X_OK) and a.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    names = zipfile.ZipFile(a).namelist()
    assert names[:2] == ["__main__.py", "ravel/__init__.py"]
    assert {n for n in names[2:]} == {f"ravel/host/{p.name}" for p in HOST_DIR.glob("*.py")}
    out = subprocess.run([sys.executable, "-I", "-S", str(a), "version"], capture_output=True,
                         text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["desired_version"] == 1


def run_cli(*args, input=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "ravel.host", *args], input=input,
                          capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize("stdin, needle", [
    ("", "no input"),
    ("{not json", "input is not JSON"),
    ('{"version": 1, "app": "demo"}', "run_dir: is required"),
])
def test_cli_invalid_input_exits_2_with_json_errors(stdin, needle):
    p = run_cli("observe", input=stdin)
    assert p.returncode == 2
    assert any(needle in e for e in json.loads(p.stdout)["errors"])
    assert needle in p.stderr


def test_cli_without_command_is_a_usage_error():
    p = run_cli()
    assert p.returncode == 2 and "apply" in p.stderr


def test_cli_observe_of_a_missing_app_changes_nothing(tmp_path):
    doc = {"version": 1, "app": "demo", "run_dir": str(tmp_path / "run")}
    p = run_cli("observe", input=json.dumps(doc))
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["converged"] is False
    assert report["pending"] == [{"kind": "run_dir.create", "target": str(tmp_path / "run"),
                                  "reason": "missing"}]
    assert not (tmp_path / "run").exists()


# -- QMP ------------------------------------------------------------------------------------------

def fake_qmp(path: str, log: list, close_on_quit=True):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        f = conn.makefile("rwb")
        f.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
        f.flush()
        for line in f:
            cmd = json.loads(line)["execute"]
            log.append(cmd)
            f.write(b'{"event": "SOMETHING", "timestamp": {}}\n')
            if cmd == "quit" and close_on_quit:
                f.flush()
                break
            f.write(b'{"return": {}}\n')
            f.flush()
        conn.close()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_qmp_negotiates_skips_events_and_tolerates_eof_on_quit(tmp_path):
    log = []
    t = fake_qmp(str(tmp_path / "q.sock"), log)
    assert proc.qmp_command(str(tmp_path / "q.sock"), "quit", expect_eof=True) == {}
    t.join(5)
    assert log == ["qmp_capabilities", "quit"]


def test_qmp_missing_socket_is_a_clear_error(tmp_path):
    with pytest.raises(proc.QMPError, match="cannot connect"):
        proc.qmp_command(str(tmp_path / "nope.sock"), "quit", timeout=0.5)


# -- pid identity ---------------------------------------------------------------------------

def test_argv_matching():
    argv = ["qemu-system-x86_64", "-m", "64"]
    assert proc.argv_matches(("qemu-system-x86_64", "-m", "64"), argv)
    assert proc.argv_matches(("/usr/bin/qemu-system-x86_64", "-m", "64"), argv)
    assert not proc.argv_matches(("qemu-system-x86_64", "-m", "96"), argv)
    assert not proc.argv_matches(("qemu-system-x86_64", "-m"), argv)
    assert not proc.argv_matches(None, argv)


def test_stop_signals_only_a_process_whose_cmdline_matches():
    child = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while proc.cmdline(child.pid) != ("sleep", "30") and time.monotonic() < deadline:
            time.sleep(0.01)  # until the child has exec'd
        # a different argv (as after pid reuse): left alone
        assert proc.stop_qemu(child.pid, ["sleep", "31"], None) == (
            f"pid {child.pid} is no longer this VM (pid reused?); left alone")
        assert child.poll() is None
        started = time.monotonic()
        detail = proc.stop_qemu(child.pid, ["sleep", "30"], None)
        child.wait(5)
        assert detail == "stopped by SIGTERM (no QMP socket)"
        assert time.monotonic() - started < 5
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)


def test_read_pidfile_rejects_garbage(tmp_path):
    p = tmp_path / "x.pid"
    for text, want in (("123\n", 123), ("", None), ("1", None), ("12a", None)):
        p.write_text(text)
        assert proc.read_pidfile(str(p)) == want
    assert proc.read_pidfile(str(tmp_path / "missing")) is None


# -- KVM probe ------------------------------------------------------------------------------

def test_kvm_probe_is_bounded_and_never_trusts_the_device_file(tmp_path):
    started = time.monotonic()
    works, detail = kvm.probe(timeout=5)
    assert isinstance(works, bool) and detail
    assert time.monotonic() - started < 6
    fake = tmp_path / "kvm"
    fake.write_text("")
    works, detail = kvm.probe(timeout=5, device=str(fake))
    assert works is False and "KVM_GET_API_VERSION failed" in detail
    absent = str(tmp_path / "absent")
    assert kvm.probe(device=absent) == (False, f"{absent} does not exist")


def test_kvm_ioctl_numbers():
    assert (kvm.KVM_GET_API_VERSION, kvm.KVM_CREATE_VM, kvm.KVM_RUN) == (0xAE00, 0xAE01, 0xAE80)
    assert kvm.KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert (kvm.KVM_GET_REGS, kvm.KVM_SET_REGS) == (0x8090AE81, 0x4090AE82)
    assert (kvm.KVM_GET_SREGS, kvm.KVM_SET_SREGS) == (0x8138AE83, 0x4138AE84)
