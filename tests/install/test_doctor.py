"""`ravel doctor` on this very machine, for real: every check looks at the real thing (the KVM
probe runs a vCPU, the network check makes a scratch namespace), so these tests assert what the
machine has. `make setup` installed every package ravel uses, so everything must be present
except KVM, which must agree with the runtime's probe run here independently (and on a CPU
without vmx/svm, such as the machines this project is built on, it does not work)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ravel.host import kvm

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {"name", "ok", "required", "detail", "fix"}
EXPECTED = ["root", "qemu", "qemu-img", "kvm", "host-runtime", "ovmf", "network", "nftables",
            "dnsmasq", "sshd", "ssh", "cloud-init", "tcpdump", "dot", "memory", "disk", "state"]


def doctor(home: Path, *args: str, path: str | None = None) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `ravel doctor` in its own process; returns the result and that process's pid (its
    scratch namespace is named after it)."""
    env = dict(os.environ, RAVEL_HOME=str(home), COLUMNS="250")
    if path is not None:
        env["PATH"] = path
    p = subprocess.Popen([sys.executable, "-m", "ravel", "doctor", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), p.pid


def scratch_namespaces(pid: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"rvdoctor-{pid}-")]


def cpu_has_virtualization() -> bool:
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    return bool({"vmx", "svm"} & set(flags.split(":", 1)[1].split()))


def test_this_machine_has_everything_but_kvm(tmp_path):
    p, pid = doctor(tmp_path / "home", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert set(doc) == {"checks", "ok"} and doc["ok"] is True
    checks = {c["name"]: c for c in doc["checks"]}
    assert [c["name"] for c in doc["checks"]] == EXPECTED
    assert all(set(c) == FIELDS and c["detail"] for c in doc["checks"]), doc
    # KVM: a warning, never required, and what the runtime's own probe says here
    works, _ = kvm.probe()
    assert checks["kvm"]["required"] is False
    assert checks["kvm"]["ok"] is works, checks["kvm"]
    if not cpu_has_virtualization():
        assert not works and "KVM does not work" in checks["kvm"]["detail"] and checks["kvm"]["fix"]
    others = [c for c in doc["checks"] if c["name"] != "kvm"]
    assert [c["name"] for c in others if not c["ok"]] == [], others
    assert checks["network"]["required"] and checks["nftables"]["required"] and checks["root"]["required"]
    # the host runtime was built under this RAVEL_HOME and run
    assert str(tmp_path / "home" / "cache") in checks["host-runtime"]["detail"]
    assert list((tmp_path / "home" / "cache").glob("ravel-host-*.pyz"))
    assert scratch_namespaces(pid) == []


def test_human_output_is_one_line_per_check_with_its_fix(tmp_path):
    p, pid = doctor(tmp_path / "home")
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    machine = lines[:len(EXPECTED) - 1]  # then the state's own block
    assert [line.split()[1] for line in machine] == EXPECTED[:-1]
    for line in machine:
        mark, name = line.split()[:2]
        assert mark == "ok" or (name == "kvm" and mark == "warning" and " -> " in line), line
    assert lines[len(EXPECTED) - 1] == f"state: {tmp_path / 'home' / 'state' / 'state.db'}"
    assert "sound: 0 apps" in p.stdout
    assert scratch_namespaces(pid) == []


def test_a_missing_required_program_is_exit_9_with_the_package_to_install(tmp_path):
    """A PATH without dnsmasq, ssh and cloud-init: dnsmasq is required (DHCP and DNS of every
    app network), the other two only warn."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python3 = os.path.realpath(sys._base_executable)  # a real binary, not a shim needing PATH
    (bin_dir / "python3").symlink_to(python3)
    for tool in ("ip", "bridge", "nft", "qemu-system-x86_64", "qemu-img"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    p, pid = doctor(tmp_path / "home", "--json", path=str(bin_dir))
    assert p.returncode == 9, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert doc["ok"] is False
    assert checks["dnsmasq"] == {"name": "dnsmasq", "ok": False, "required": True,
                                 "detail": "dnsmasq is not installed (DHCP and DNS for each app network)",
                                 "fix": "apt-get install dnsmasq-base"}
    assert (checks["ssh"]["ok"], checks["ssh"]["required"], checks["ssh"]["fix"]) == \
        (False, False, "apt-get install openssh-client")
    assert (checks["cloud-init"]["ok"], checks["cloud-init"]["fix"]) == (False, "apt-get install cloud-init")
    # what is on that PATH still works: the runtime runs with that python3, the network check
    assert checks["host-runtime"]["ok"] and checks["network"]["ok"] and checks["nftables"]["ok"]
    assert checks["sshd"]["ok"]  # found by its absolute path, as the local provider starts it
    p, _ = doctor(tmp_path / "home", path=str(bin_dir))
    assert p.returncode == 9
    line = next(line for line in p.stdout.splitlines() if line.split()[1:2] == ["dnsmasq"])
    assert line.startswith("MISSING") and line.endswith("-> apt-get install dnsmasq-base"), line
    assert scratch_namespaces(pid) == []
