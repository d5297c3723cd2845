"""`ravel doctor`: does this machine have what ravel needs? One `Check` per thing, each with the
command that fixes it. Every check looks at the real thing (runs the binary, probes KVM with a
vCPU, builds the host runtime and runs it) rather than trusting that a file exists, because a
present-but-broken tool is exactly what a user cannot diagnose from a failed publish.

`required`: a failure stops the local provider from working (exit 9). The others degrade one
feature (KVM: VMs fall back to TCG; OVMF: UEFI guests; sshd: `--transport ssh`; ...).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from ..host import facts as host_facts
from ..host import kvm
from ..paths import Paths
from ..providers.local_sshd import SSHD
from ..render.qemu import OVMF_CODE, OVMF_VARS, QEMU
from ..transport.hostctl import REMOTE_PYTHON, bundle
from .checks import Check
from .scratchnet import scratch_network

TESTED_QEMU = (7, 2)  # Debian 12's; the oldest ravel's tests run against
MIN_MEMORY_MIB = 1024  # the demo lab (4 small VMs under TCG) and QEMU's own overhead
MIN_DISK_MIB = 2048  # a few qcow2 overlays and a snapshot layer or two
RUN_TIMEOUT = 15.0


def check_machine(paths: Paths) -> list[Check]:
    """Every check, in a fixed order. They wait on programs, not the CPU, so they run side by
    side (cloud-init alone takes a second to say its version)."""
    parts: list[Callable[[], list[Check]]] = [
        lambda: [root()], lambda: [qemu()],
        lambda: [tool("qemu-img", "qemu-utils", "disk images, overlays, snapshots", "--version")],
        lambda: list(runtime_and_kvm(paths)), lambda: [ovmf()], scratch_network,
        lambda: [tool("dnsmasq", "dnsmasq-base", "DHCP and DNS for each app network", "--version")],
        lambda: [tool("sshd", "openssh-server", "hosts reached with --transport ssh", path=SSHD,
                      required=False)],
        lambda: [tool("ssh", "openssh-client", "`ravel ssh`, ssh readiness checks", "-V",
                      required=False)],
        lambda: [tool("cloud-init", "cloud-init", "checks user-data before publishing", "--version",
                      required=False)],
        lambda: [tool("tcpdump", "tcpdump", "`ravel capture`", "--version", required=False)],
        lambda: [tool("dot", "graphviz", "`ravel graph` as SVG, the topology in `ravel ui`", "-V",
                      required=False)],
        lambda: [memory()], lambda: [disk(paths)],
    ]
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        return [c for found in pool.map(lambda part: part(), parts) for c in found]


def runtime_and_kvm(paths: Paths) -> tuple[Check, Check]:
    runtime, facts = host_runtime(paths)
    return kvm_check(facts), runtime


def _run(argv: list[str], timeout: float = RUN_TIMEOUT) -> tuple[int, str, str]:
    """(exit status, stdout, stderr); 127 when the program is missing, 124 on timeout."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: not found"
    except PermissionError as exc:
        return 126, "", f"{argv[0]}: {exc.strerror}"
    except subprocess.TimeoutExpired:
        return 124, "", f"`{' '.join(argv)}` did not finish within {timeout:g} s"
    return p.returncode, p.stdout.strip(), p.stderr.strip()


def root() -> Check:
    uid = os.geteuid()
    if uid == 0:
        return Check("root", True, True, "running as root")
    return Check("root", False, True,
                 f"running as uid {uid}; the local provider makes network namespaces and taps",
                 "run ravel as root (sudo ravel ...)")


def qemu() -> Check:
    return qemu_check(host_facts.qemu_info(QEMU))


def qemu_check(info: dict[str, str] | None) -> Check:
    """From what `qemu-system-x86_64 --version` said (ravel/host/facts.py: qemu_info). Pure."""
    if info is None:
        return Check("qemu", False, True, f"{QEMU} is not installed",
                     "apt-get install qemu-system-x86")
    version = info.get("version", "")
    if not re.fullmatch(r"\d+(\.\d+)+", version):
        return Check("qemu", False, True, f"{info['path']} --version did not answer ({version!r})",
                     "apt-get install --reinstall qemu-system-x86")
    if tuple(int(x) for x in version.split(".")[:2]) < TESTED_QEMU:
        # it may well work: a warning, not a refusal
        return Check("qemu", False, False,
                     f"QEMU {version} ({info['path']}), older than "
                     f"{'.'.join(map(str, TESTED_QEMU))}, the oldest ravel is tested with",
                     "install a newer qemu-system-x86 (Debian 12 or later)")
    return Check("qemu", True, True, f"QEMU {version} ({info['path']})")


def tool(name: str, package: str, why: str, *args: str, path: str | None = None,
         required: bool = True) -> Check:
    """A program is there and runs (with `args`, e.g. --version; without, it only has to exist
    and be executable: sshd has no harmless flag)."""
    exe = path if path and os.path.isfile(path) else shutil.which(name)
    if exe is None or not os.access(exe, os.X_OK):
        return Check(name, False, required, f"{path or name} is not installed ({why})",
                     f"apt-get install {package}")
    if args:
        rc, stdout, stderr = _run([exe, *args])
        out = stdout or stderr  # ssh -V answers on stderr
        if rc != 0:
            return Check(name, False, required, f"{exe} {' '.join(args)} failed: {out[:200]}",
                         f"apt-get install --reinstall {package}")
        # the version line, without the copyright notice dnsmasq puts on it
        first = out.splitlines()[0].split("  ")[0].strip() if out else ""
        return Check(name, True, required, first if exe in first else f"{first} ({exe})".strip())
    return Check(name, True, required, exe)


def host_runtime(paths: Paths) -> tuple[Check, dict[str, Any] | None]:
    """Build the host runtime zipapp exactly as publish does and run its `facts` with the
    interpreter hosts use: proves the bundle (package data of an installed ravel included) and
    the host's python3 work together, and yields the KVM probe of the runtime itself."""
    try:
        pyz = bundle(paths.cache)
    except OSError as exc:
        return Check("host-runtime", False, True, f"cannot build the host runtime in {paths.cache}: "
                     f"{exc.strerror or exc}", "make RAVEL_HOME (or ~/.cache) writable"), None
    python = shutil.which(REMOTE_PYTHON)
    if python is None:
        return Check("host-runtime", False, True, f"{REMOTE_PYTHON} is not on PATH (hosts run the "
                     "runtime with it)", "apt-get install python3"), None
    rc, out, err = _run([python, str(pyz), "facts"], timeout=30)
    try:
        facts = json.loads(out) if rc == 0 else None
    except ValueError:
        facts = None
    if not isinstance(facts, dict) or not isinstance(facts.get("kvm"), dict):
        return Check("host-runtime", False, True,
                     f"{python} {pyz.name} facts failed (exit {rc}): {(err or out)[:200]}",
                     "reinstall ravel (pip install --force-reinstall ravel)"), None
    return Check("host-runtime", True, True, f"{pyz} runs with {python}"), facts


def kvm_check(facts: dict[str, Any] | None) -> Check:
    """The runtime's own probe (a vCPU runs a timed loop, ravel/host/kvm.py), or the same probe
    in-process when the runtime could not run. Never required: QEMU falls back to TCG."""
    if facts is not None:
        works, detail = bool(facts["kvm"].get("works")), str(facts["kvm"].get("detail", ""))
    else:
        works, detail = kvm.probe()
    if works:
        return Check("kvm", True, False, detail)
    fix = ("enable VT-x/AMD-V in the firmware, or nested virtualization on a cloud instance "
           "(see docs/clouds.md); VMs run with TCG meanwhile")
    if not os.path.exists(kvm.KVM_DEVICE):
        fix = "modprobe kvm_intel (or kvm_amd) where the CPU has VT-x/AMD-V; VMs run with TCG meanwhile"
    return Check("kvm", False, False, f"KVM does not work: {detail}", fix)


def ovmf() -> Check:
    missing = [p for p in (OVMF_CODE, OVMF_VARS) if not os.path.isfile(p)]
    if missing:
        return Check("ovmf", False, False, f"{', '.join(missing)} missing (UEFI guests only)",
                     "apt-get install ovmf")
    return Check("ovmf", True, False, f"{OVMF_CODE}, {OVMF_VARS}")


def memory() -> Check:
    available = _meminfo("MemAvailable")
    if available is None:
        return Check("memory", False, False, "cannot read MemAvailable from /proc/meminfo",
                     "check /proc is mounted")
    ok = available >= MIN_MEMORY_MIB
    return Check("memory", ok, False, f"{available} MiB available"
                 + ("" if ok else f", less than {MIN_MEMORY_MIB} MiB"),
                 "" if ok else "stop other VMs, or use a machine with more memory")


def disk(paths: Paths) -> Check:
    where = _existing(paths.data)
    usage = shutil.disk_usage(where)
    free = usage.free // (1024 * 1024)
    ok = free >= MIN_DISK_MIB
    return Check("disk", ok, False, f"{free} MiB free at {where} (VM disks: {paths.data})"
                 + ("" if ok else f", less than {MIN_DISK_MIB} MiB"),
                 "" if ok else "free space there, or point RAVEL_HOME at a larger disk")


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _existing(path: Path) -> Path:
    """`path` or its nearest existing parent (RAVEL_HOME may not exist before the first publish)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
