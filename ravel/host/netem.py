"""Per-NIC link impairment (tc on the VM's tap) and cable pulls (QMP set_link): facts, the
actions that reach the desired document's, and running them. Standard library only.

Impairment acts on the frames a tap *transmits*, which are the frames its guest receives:
``netem`` (delay, jitter, loss, corrupt, duplicate) as the tap's root qdisc, with ``tbf`` (rate)
as its child, or ``tbf`` alone for a rate alone. A ping through an impaired NIC therefore sees
the delay once per round trip, whichever side started it (docs/netem.md).

A kernel without ``sch_netem`` (some cloud and CI kernels) gets the same behaviour in user space:
a relay process per tap (relay_netem.py) that a ``clsact`` egress filter hands the tap's frames
to. A rate alone is always ``tbf``.

What was applied is recorded in ``run_dir/netem.json`` with the tap's ifindex (a tap made again
has a new one and no qdisc) and, for cable pulls, with the QEMU pid and start time (a QEMU
started again has every link up):

    {"taps": {"rt1n0": {"ifindex": 7, "impair": {"delay_us": 100000}, "mode": "netem"}},
     "links": {"web-1": {"pid": 4242, "starttime": 123, "down": ["net0"]}}}
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import proc

RECORD = "netem.json"
OURS = ("netem", "tbf")  # root qdiscs this module makes; any other root is the kernel's default
NETEM_LIMIT = 10000  # packets netem holds: 100 ms of 1 Gbit/s of full frames
TBF_LATENCY_MS = 100  # how long a frame may wait in tbf before it is dropped
NO_NETEM = ("this host's kernel has no netem qdisc (sch_netem, CONFIG_NET_SCH_NETEM): delay, "
            "jitter, loss, corrupt and duplicate need it; `modprobe sch_netem`, or a kernel with it "
            "(rate alone works: it is tbf)")

Argv = Tuple[str, ...]


NETEM_FIELDS = ("delay_us", "jitter_us", "loss", "corrupt", "duplicate")
RELAY_START_S = 5.0


@dataclass(frozen=True)
class TapQdisc:
    ifindex: int
    root: str  # the root qdisc's kind ("" when the tap has none)
    clsact: bool = False  # a clsact qdisc (the relay's filter hangs there)
    relay: Optional[int] = None  # the pid of its live relay, if any


@dataclass(frozen=True)
class NetemFacts:
    taps: Dict[str, TapQdisc] = field(default_factory=dict)
    record: Dict[str, Any] = field(default_factory=dict)
    kernel_netem: bool = True  # the kernel has sch_netem (else: the relay)


def parse_qdiscs(text: str) -> Dict[str, str]:
    """``tc -j qdisc show`` -> {device: kind of its root qdisc}; a clsact qdisc shows as
    {"<device> clsact": "clsact"}."""
    roots: Dict[str, str] = {}
    for item in json.loads(text or "[]"):
        if item.get("dev") and item.get("kind") == "clsact":
            roots[item["dev"] + " clsact"] = "clsact"
        elif item.get("root") and item.get("dev"):
            roots[item["dev"]] = item.get("kind") or ""
    return roots


def kernel_has_netem() -> bool:
    if os.path.exists("/sys/module/sch_netem"):
        return True
    try:
        return proc.run(["modprobe", "-n", "-q", "sch_netem"], check=False).rc == 0
    except proc.CommandFailed:  # no modprobe
        return False


def mode_for(want: Dict[str, Any], kernel_netem: bool) -> str:
    """netem (tc), relay (user space: no netem in this kernel) or "" (nothing to do)."""
    if not want:
        return ""
    if any(want.get(k) for k in NETEM_FIELDS) and not kernel_netem:
        return "relay"
    return "netem"


def via_name(tap: str) -> str:
    """The relay's own tap for `tap`: rt1n0 -> rq1n0."""
    return ("rq" + tap[2:])[:15]


def relay_pidfile(run_dir: str, tap: str) -> str:
    return os.path.join(run_dir, f"relay-{tap}.pid")


def relay_argv(run_dir: str, tap: str, want: Dict[str, Any]) -> List[str]:
    """How this runtime starts a relay: the same zipapp (or package) it runs from."""
    me = sys.argv[0] if sys.argv and sys.argv[0].endswith(".pyz") else ""
    head = [sys.executable, me] if me else [sys.executable, "-m", "ravel.host"]
    return head + ["netem-relay", "--tap", tap, "--via", via_name(tap), "--impair",
                   json.dumps(want, sort_keys=True), "--pidfile", relay_pidfile(run_dir, tap)]


def _relay_pid(run_dir: str, tap: str) -> Optional[int]:
    pid = proc.read_pidfile(relay_pidfile(run_dir, tap))
    if not pid:
        return None
    cmd = proc.cmdline(pid)
    st = proc.stat(pid)
    if not cmd or st is None or st[0] in ("Z", "X") or "netem-relay" not in cmd or tap not in cmd:
        return None
    return pid


def read_record(run_dir: str) -> Dict[str, Any]:
    try:
        with open(os.path.join(run_dir, RECORD)) as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_record(run_dir: str, doc: Dict[str, Any]) -> None:
    proc.write_json_atomic(os.path.join(run_dir, RECORD), doc)


def gather(run_dir: str, taps: Sequence[str], need_netem: bool = False) -> NetemFacts:
    """The root qdisc, clsact, relay and ifindex of each tap that exists, and the record;
    whether the kernel has netem when `need_netem` (a tap wants delay, loss...)."""
    record = read_record(run_dir)
    names = set(taps) | set((record.get("taps") or {}))
    present = [t for t in sorted(names) if os.path.exists(f"/sys/class/net/{t}")]
    out: Dict[str, TapQdisc] = {}
    if present:
        try:
            roots = parse_qdiscs(proc.run(["tc", "-j", "qdisc", "show"]).stdout)
        except (proc.CommandFailed, ValueError):  # no tc here: nothing of ours can be there either
            roots = {}
        for t in present:
            out[t] = TapQdisc(_ifindex(t), roots.get(t, ""), f"{t} clsact" in roots, _relay_pid(run_dir, t))
    return NetemFacts(out, record, kernel_has_netem() if need_netem else True)


def _ifindex(dev: str) -> int:
    try:
        with open(f"/sys/class/net/{dev}/ifindex") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


# -- pure: what is there, what is wanted, the commands ------------------------------------------

def observed_impair(tap: str, facts: NetemFacts) -> Optional[Dict[str, Any]]:
    """What the tap does now: {} for nothing, the recorded impairment when its qdisc is still
    ours on the same device, None when unknown (a qdisc of ours that the record does not
    describe: set again)."""
    q = facts.taps.get(tap)
    if q is None or (q.root not in OURS and q.relay is None and not q.clsact):
        return {}
    rec = (facts.record.get("taps") or {}).get(tap)
    if not (isinstance(rec, dict) and rec.get("ifindex") == q.ifindex and isinstance(rec.get("impair"), dict)):
        return None
    if rec.get("mode") == "relay" and q.relay is None:
        return None  # its relay died: the guest receives nothing until it runs again
    return rec["impair"]


def tc_commands(tap: str, want: Dict[str, Any], root_now: str, mtu: int, clsact_now: bool = False,
                mode: str = "netem") -> List[Argv]:
    """The tc commands that take the tap from its root qdisc `root_now` (and a clsact qdisc) to
    `want`; in relay mode, the clsact qdisc the relay's filter needs (the relay adds the filter)."""
    cmds: List[Argv] = []
    if root_now in OURS:
        cmds.append(("tc", "qdisc", "del", "dev", tap, "root"))
    if clsact_now and mode != "relay":
        cmds.append(("tc", "qdisc", "del", "dev", tap, "clsact"))
    if mode == "relay":
        if not clsact_now:
            cmds.append(("tc", "qdisc", "add", "dev", tap, "clsact"))
        return cmds
    args: List[str] = []
    if want.get("delay_us"):
        args += ["delay", f"{int(want['delay_us'])}us"]
        if want.get("jitter_us"):
            args += [f"{int(want['jitter_us'])}us"]
    for key in ("loss", "corrupt", "duplicate"):
        if want.get(key):
            args += [key, f"{float(want[key]):g}%"]
    rate = int(want.get("rate_kbit") or 0)
    tbf: List[str] = []
    if rate:
        # a burst of 10 ms at the rate, never less than two full frames (a jumbo frame included)
        burst = max(rate * 1000 // 8 // 100, 2 * (mtu + 14))
        tbf = ["tbf", "rate", f"{rate}kbit", "burst", str(burst), "latency", f"{TBF_LATENCY_MS}ms"]
    if args:
        cmds.append(("tc", "qdisc", "add", "dev", tap, "root", "handle", "1:", "netem",
                     "limit", str(NETEM_LIMIT), *args))
        if tbf:
            cmds.append(("tc", "qdisc", "add", "dev", tap, "parent", "1:1", "handle", "10:", *tbf))
    elif tbf:
        cmds.append(("tc", "qdisc", "add", "dev", tap, "root", "handle", "1:", *tbf))
    return cmds


def describe(doc: Dict[str, Any]) -> str:
    parts = [f"{k} {v}" for k, v in sorted(doc.items())]
    return ", ".join(parts) or "none"


def observed_down(vm: str, pid: Optional[int], starttime: Optional[int], facts: NetemFacts) -> List[str]:
    """The NICs of this QEMU (pid and start time) that ravel pulled the cable of."""
    rec = (facts.record.get("links") or {}).get(vm)
    if not isinstance(rec, dict) or pid is None or rec.get("pid") != pid or rec.get("starttime") != starttime:
        return []
    return sorted(rec.get("down") or [])


# -- effects --------------------------------------------------------------------------------

def stop_relay(pid: Optional[int], tap: str) -> None:
    if not pid or _relay_pid_any(pid, tap) is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not proc.wait_gone(pid, RELAY_START_S):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait_gone(pid, RELAY_START_S)


def _relay_pid_any(pid: int, tap: str) -> Optional[int]:
    cmd = proc.cmdline(pid)
    return pid if cmd and "netem-relay" in cmd and tap in cmd else None


def start_relay(argv: Sequence[str], pidfile: str) -> int:
    import subprocess

    proc.unlink_quiet(pidfile)
    p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + RELAY_START_S
    while time.monotonic() < deadline:
        if proc.read_pidfile(pidfile) == p.pid:
            if p.stderr:
                p.stderr.close()
            return p.pid
        if p.poll() is not None:
            err = p.stderr.read().decode(errors="replace").strip() if p.stderr else ""
            raise proc.CommandFailed(tuple(argv), err or f"the relay ended with status {p.returncode}")
        time.sleep(0.05)
    p.kill()
    raise proc.CommandFailed(tuple(argv), f"the relay did not start within {RELAY_START_S:g} s")


def set_impair(run_dir: str, tap: str, want: Dict[str, Any], cmds: Sequence[Argv], mode: str = "netem",
               stop: Optional[int] = None) -> str:
    stop_relay(stop, tap)
    for argv in cmds:
        try:
            proc.run(argv)
        except proc.CommandFailed as exc:
            if "netem" in argv and "unknown" in str(exc).lower():
                raise proc.CommandFailed(argv, NO_NETEM) from None
            raise
    detail = describe(want)
    if mode == "relay":
        pid = start_relay(relay_argv(run_dir, tap, want), relay_pidfile(run_dir, tap))
        detail += f" (in user space: this kernel has no netem; relay pid {pid})"
    doc = read_record(run_dir)
    taps = dict(doc.get("taps") or {})
    if want:
        taps[tap] = {"ifindex": _ifindex(tap), "impair": want, "mode": mode or "netem"}
    else:
        taps.pop(tap, None)
    doc["taps"] = taps
    _write_record(run_dir, doc)
    return detail


def set_links(run_dir: str, vm: str, qmp: str, pidfile: str, down: Sequence[str],
              netdevs: Sequence[str]) -> str:
    """Every NIC in `netdevs` up, but those in `down` (QMP set_link); recorded with the QEMU."""
    for nd in netdevs:
        proc.qmp_command(qmp, "set_link", arguments={"name": nd, "up": nd not in down})
    pid = proc.read_pidfile(pidfile)
    st = proc.stat(pid) if pid else None
    doc = read_record(run_dir)
    links = dict(doc.get("links") or {})
    if down:
        links[vm] = {"pid": pid, "starttime": st[1] if st else None, "down": sorted(down)}
    else:
        links.pop(vm, None)
    doc["links"] = links
    _write_record(run_dir, doc)
    return "down: " + ", ".join(down) if down else "all up"
