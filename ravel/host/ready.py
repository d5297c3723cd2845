"""Is each guest ready? Checked here, on the VM's own host, because the guest networks exist
only inside the hosts. Standard library only; every check is bounded and changes nothing.

Request (JSON): {"run_dir": ..., "checks": [{"vm", "kind", "ip"?, "port"?, "pattern"?, "tap"?,
"mac"?, "log", "pidfile"}]}. Report: {"vms": {name: {"ready": bool, "seen": what was seen last,
"booting_s": seconds since its QEMU started (or null), "last_line": the console's last line}}}.

Kinds: ssh (an SSH banner on the port), tcp (the port accepts), ping (ICMP echo), lease (the
guest took its DHCP lease from this host's dnsmasq), link (the guest has sent a frame: its tap
received one), console (a regex over the serial output; default: the markers ravel's own guest
image prints), none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional

from .netconf import dnsmasq_paths
from .resume import RESUMED_NOTE

CONNECT_S = 3.0
BANNER_S = 5.0
KEYSCAN_S = 5.0
PING_S = 1.0
# a request's "slow" (how many guests boot per core, from the caller) stretches the bounds above:
# a guest starved of CPU answers late, and a bound it can never meet would keep it booting
MOST_SLOW = 4.0
LOG_TAIL = 1 << 20  # the console is searched in its last MiB
DEFAULT_MARKERS = ("RAVEL-READY", "login:")
# a VM resumed from a saved memory state does not boot again: it prints, leases and announces
# nothing new, so what only a boot shows counts once the host noted the resume
SHOWN_BY_BOOT = ("console", "lease", "link")


def worst_case_s(slow: float = 1.0) -> float:
    """The longest one check may take (they run at once): whoever asks waits at least this long
    for a report, or a slow guest that does answer would show as unknown."""
    return (CONNECT_S + BANNER_S + KEYSCAN_S) * stretch(slow) + 2


def stretch(slow: float) -> float:
    """How far a request's "slow" stretches the bounds: between 1 and MOST_SLOW."""
    return min(MOST_SLOW, max(1.0, slow))


def check_all(request: Dict[str, Any]) -> Dict[str, Any]:
    run_dir = str(request.get("run_dir") or "")
    leases = _read(dnsmasq_paths(run_dir)["leases"]).decode(errors="replace") if run_dir else ""
    slow = stretch(float(request.get("slow") or 1.0))

    def one(c: Dict[str, Any]) -> Dict[str, Any]:
        log = this_boot(str(c.get("log") or ""))
        ok, seen = check(c, log, leases, slow)
        return {"ready": ok, "seen": seen, "booting_s": _age(str(c.get("pidfile") or "")), "last_line": last_line(log)}

    checks = list(request.get("checks") or [])
    # at once: a guest that does not answer yet costs its timeouts, not its neighbours'
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(checks)))) as pool:
        results = list(pool.map(one, checks))
    return {"vms": {str(c["vm"]): r for c, r in zip(checks, results)}}


def check(c: Dict[str, Any], log: str, leases: str, slow: float = 1.0) -> "tuple[bool, str]":
    kind = c.get("kind")
    if kind == "none":
        return True, "not checked"
    if kind in SHOWN_BY_BOOT and RESUMED_NOTE in log:
        return True, "resumed from a saved memory state"
    if kind == "console":
        pattern = c.get("pattern")
        found = re.search(pattern, log, re.MULTILINE) is not None if pattern else any(m in log for m in DEFAULT_MARKERS)
        return found, "matched" if found else "no match in its output yet" if log else "no console output yet"
    if kind == "lease":
        mac = str(c.get("mac") or "").lower()
        taken = any(len(f) >= 3 and f[1].lower() == mac for f in (line.split() for line in leases.splitlines()))
        return taken, "lease taken" if taken else f"no DHCP lease for {mac} yet"
    if kind == "link":
        frames = tap_frames(str(c.get("tap") or ""))
        if frames is None:
            return False, f"tap {c.get('tap')} not there"
        return frames > 0, f"{frames} frames from the guest"
    ip, port = str(c.get("ip") or ""), int(c.get("port") or 0)
    if kind == "ping":
        return ping(ip)
    if kind == "ssh":
        ok, seen = probe_tcp(ip, port, banner=True, slow=slow)
        if ok and c.get("host_key"):
            return pinned_key(ip, port, str(c["host_key"]), slow)
        return ok, seen
    if kind == "tcp":
        return probe_tcp(ip, port, banner=False, slow=slow)
    return False, f"unknown check {kind!r}"


def pinned_key(ip: str, port: int, want: str, slow: float = 1.0) -> "tuple[bool, str]":
    """SSH counts as ready only once the guest shows the host key ravel made for it: a guest
    whose cloud-init has not yet installed it (a first boot, or a restored snapshot's disk with
    the old key) is still booting, and a connection would be refused as a mismatch."""
    keyscan = shutil.which("ssh-keyscan")
    if keyscan is None:
        return True, "SSH banner (ssh-keyscan is not on this host: the key was not compared)"
    try:
        p = subprocess.run([keyscan, "-t", "ed25519", "-T", str(int(KEYSCAN_S * slow)), "-p", str(port), ip],
                           capture_output=True, text=True, timeout=KEYSCAN_S * slow + 2)
    except subprocess.TimeoutExpired:
        return False, f"{ip}:{port} did not show its host key in time"
    want_key = want.split()[:2]
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1:3] == want_key:
            return True, "SSH answers with its pinned host key"
    shown = next((line.split()[1:3] for line in p.stdout.splitlines() if len(line.split()) >= 3), None)
    return False, (f"{ip}:{port} shows another host key ({shown[0]} ...{shown[1][-8:]}): cloud-init has not "
                   "installed ravel's yet" if shown else f"{ip}:{port} showed no ed25519 host key")


def probe_tcp(ip: str, port: int, banner: bool, slow: float = 1.0) -> "tuple[bool, str]":
    try:
        with socket.create_connection((ip, port), timeout=CONNECT_S * slow) as s:
            if not banner:
                return True, f"{ip}:{port} accepts"
            s.settimeout(BANNER_S * slow)
            got = s.recv(256)
    except socket.timeout:
        return False, f"{ip}:{port} {'sent no banner' if banner else 'did not answer'}"
    except OSError as exc:
        return False, f"{ip}:{port} {exc.strerror or exc}"
    if got.startswith(b"SSH-"):
        return True, got.split(b"\r", 1)[0].decode(errors="replace")
    return False, f"{ip}:{port} answered {got[:40]!r}, not an SSH banner"


def ping(ip: str) -> "tuple[bool, str]":
    """One ICMP echo, without the ping binary (a raw socket: the runtime runs as root)."""
    ident = os.getpid() & 0xFFFF
    body = b"ravel-ready"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    packet = header[:2] + struct.pack("!H", _checksum(header + body)) + header[4:] + body
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            s.settimeout(PING_S)
            s.sendto(packet, (ip, 0))
            deadline = time.monotonic() + PING_S
            while time.monotonic() < deadline:
                data, (src, _) = s.recvfrom(2048)
                hl = (data[0] & 0x0F) * 4
                kind, _, _, rid, _ = struct.unpack("!BBHHH", data[hl:hl + 8])
                if src == ip and kind == 0 and rid == ident:
                    return True, f"{ip} answers ping"
    except socket.timeout:
        pass
    except OSError as exc:
        return False, f"{ip}: {exc.strerror or exc}"
    return False, f"{ip} does not answer ping"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def tap_frames(tap: str) -> Optional[int]:
    """Frames the guest has sent: what the tap received (QEMU writes the guest's frames into it).
    From /proc/net/dev, which always shows the reader's own network namespace."""
    for line in _read("/proc/net/dev").decode(errors="replace").splitlines():
        name, sep, rest = line.partition(":")
        if sep and name.strip() == tap:
            fields = rest.split()
            return int(fields[1]) if len(fields) > 1 else None
    return None


_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[@-_])")  # terminal control sequences


def last_line(log: str) -> str:
    for line in reversed(log.splitlines()):
        text = "".join(ch for ch in _ESCAPES.sub("", line) if ch.isprintable()).strip()
        if text:
            return text[:200]
    return ""


def last_lines(log: str, n: int = 5) -> List[str]:
    """The last `n` lines of a console log that show something, as plain text."""
    out: List[str] = []
    for line in reversed(log.splitlines()):
        text = "".join(ch for ch in _ESCAPES.sub("", line) if ch.isprintable()).strip()
        if text:
            out.append(text[:200])
            if len(out) == n:
                break
    return out[::-1]


def _age(pidfile: str) -> Optional[float]:
    """Seconds since the VM's QEMU started (from its /proc entry), None when it is not running."""
    try:
        pid = int(_read(pidfile).decode().strip())
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError):
        return None
    start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def mark_boot(log: Optional[str]) -> None:
    """Note where the console log ends before a VM starts: the log is appended to across
    restarts, and what an earlier boot printed must not make the new one look ready."""
    if not log:
        return
    try:
        size = os.path.getsize(log)
    except OSError:
        size = 0
    tmp = f"{log}.boot.tmp"
    with open(tmp, "w") as fh:
        fh.write(str(size))
    os.replace(tmp, f"{log}.boot")


def this_boot(path: str) -> str:
    """What the console printed since the VM last started (at most its last MiB)."""
    if not path:
        return ""
    try:
        start = int(_read(f"{path}.boot").decode().strip() or 0)
    except ValueError:
        start = 0
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(start if start <= size else 0, size - LOG_TAIL))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


WATCH_INTERVAL_S = 0.5
WATCH_MAX_S = 3600.0
REQUEST_WAIT_S = 60.0


def watch(stdin_fd: int = 0, stdout: Any = None) -> int:
    """`ravel-host wait-ready`: the request as one JSON line on stdin, then a report line every
    `interval` seconds until every guest is ready, the caller hangs up (stdin ends), or
    `max_s` passes. One process for a whole --wait: checking costs a socket and a few file
    reads here, where starting the runtime for each look would cost a Python start-up."""
    from .snapshot import LineReader

    out = stdout or sys.stdout
    reader = LineReader(stdin_fd)
    try:
        request = json.loads(reader.readline(REQUEST_WAIT_S) or "")
    except ValueError as exc:
        request, problems = None, [f"the request is not JSON: {exc}"]
    else:
        problems = checks_of(request)
    if problems or request is None:
        out.write(json.dumps({"error": "; ".join(problems)}) + "\n")
        out.flush()
        return 2
    interval = float(request.get("interval") or WATCH_INTERVAL_S)
    deadline = time.monotonic() + float(request.get("max_s") or WATCH_MAX_S)
    while True:
        report = check_all(request)
        out.write(json.dumps(report) + "\n")
        out.flush()
        if all(v["ready"] for v in report["vms"].values()) or time.monotonic() > deadline:
            return 0
        if reader.readline(interval) is not None:  # a line or the end of stdin: the caller is done
            return 0


def checks_of(request: Any) -> List[str]:
    """Problems with a request (empty: fine)."""
    if not isinstance(request, dict) or not isinstance(request.get("checks"), list):
        return ["ready: the request must be an object with a list of `checks`"]
    return [f"checks[{i}]: needs `vm` and `kind`" for i, c in enumerate(request["checks"])
            if not isinstance(c, dict) or "vm" not in c or "kind" not in c]
