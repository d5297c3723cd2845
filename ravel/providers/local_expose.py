"""Exposed services on the local provider: one relay process per service, listening on
127.0.0.1 of this machine (never on a real interface) and connecting to the guest from inside
the app's host namespace. A relay is started detached and ended by PID, after /proc shows it
is still the process we started.

The listening socket is made here, in the root namespace, and handed to the relay as an open
file descriptor; the relay runs under `ip netns exec`, so the sockets it opens itself (towards
the guest) live in the host namespace, where the guest's network is.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ProviderError
from ..plan.network import ServiceForward
from . import relay
from .base import Exposure, Host

LOOPBACK = "127.0.0.1"
START_CHECK_S = 0.3  # a relay that dies this early (bad target, python missing) is reported
STOP_WAIT_S = 3.0


def relay_tag(state_tag: str, app: str, vm: str, port: int, protocol: str) -> str:
    return f"ravel/{state_tag}/{app}/{vm}/{port}/{protocol}"


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").rstrip("\0").split("\0") if raw else None


def _is_ours(e: Exposure) -> bool:
    """Alive, and still the relay we started: `ip netns exec` execs the rest of its argv."""
    pid, argv = e.extra.get("pid"), e.extra.get("argv")
    if not pid or not argv:
        return False
    seen = _cmdline(int(pid))
    return seen is not None and seen == list(argv)[4:]


def end(e: Exposure) -> None:
    if not _is_ours(e):
        return
    pid = int(e.extra["pid"])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            if not _is_ours(e):
                return
            time.sleep(0.05)
    if _is_ours(e):
        raise ProviderError(f"relay pid {pid} for {e.vm} {e.port}/{e.protocol} would not exit")


def _listen(protocol: str, port: int) -> socket.socket:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    try:
        if protocol == "tcp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((LOOPBACK, port))
        if protocol == "tcp":
            s.listen(64)
    except OSError:
        s.close()
        raise
    return s


def start(fw: ServiceForward, namespace: str, tag: str, log_dir: Path, port: int) -> Exposure:
    """Listen on 127.0.0.1:`port` (0: any free port) and start the relay behind it."""
    try:
        sock = _listen(fw.protocol, port)
    except OSError as exc:
        raise ProviderError(f"{fw.vm}: cannot listen on {LOOPBACK}:{port} for service "
                            f"{fw.port}/{fw.protocol}: {exc.strerror or exc}",
                            hint="free that port, or give the service another host_port") from None
    try:
        host_port = sock.getsockname()[1]
        fd = sock.fileno()
        argv = ["ip", "netns", "exec", namespace, sys.executable, str(Path(relay.__file__)),
                "--fd", str(fd), "--protocol", fw.protocol, "--target", f"{fw.target}:{fw.port}",
                "--tag", tag]
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = log_dir / f"relay-{fw.vm}-{fw.port}-{fw.protocol}.log"
        with open(log, "ab") as out:
            try:
                p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     pass_fds=(fd,), start_new_session=True, cwd="/")
            except OSError as exc:
                raise ProviderError(f"{fw.vm}: cannot start the relay for {fw.port}/{fw.protocol}: {exc}") from None
    finally:
        sock.close()  # the relay holds its own copy
    time.sleep(START_CHECK_S)
    if p.poll() is not None:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ProviderError(f"{fw.vm}: the relay for {fw.port}/{fw.protocol} exited at once: {tail[0]}",
                            hint=f"see {log}")
    return Exposure(fw.vm, fw.port, fw.protocol, LOOPBACK, host_port, fw.target, fw.host,
                    {"pid": p.pid, "argv": argv, "namespace": namespace})


def _strays(tag: str, keep: int | None, prefix: bool = False) -> list[int]:
    """Relays with this tag (or tag prefix) that no record knows: a publish was interrupted
    before it saved them."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == keep:
            continue
        cmd = _cmdline(int(d.name))
        if not cmd or len(cmd) < 4 or cmd[1] != str(Path(relay.__file__)) or cmd[-2] != "--tag":
            continue
        if cmd[-1] == tag or (prefix and cmd[-1].startswith(tag)):
            found.append(int(d.name))
    return found


def _end_pid(pid: int, vm: str = "?") -> None:
    end(Exposure(vm, 0, "", LOOPBACK, 0, "", "",
                 {"pid": pid, "argv": ["ip", "netns", "exec", ""] + (_cmdline(pid) or [])}))


def expose(state_tag: str, app: str, hosts: Mapping[str, Host], forwards: Sequence[ServiceForward],
           current: Sequence[Exposure], log_dir: Path) -> list[Exposure]:
    by_key = {(e.vm, e.port, e.protocol): e for e in current}
    wanted = {(f.vm, f.port, f.protocol) for f in forwards}
    for key, e in by_key.items():
        if key not in wanted:
            end(e)
    out: list[Exposure] = []
    try:
        _expose_each(state_tag, app, hosts, forwards, by_key, log_dir, out)
    except BaseException:
        for e in out:  # what this call started is not recorded anywhere yet: end it
            if e not in current:
                end(e)
        raise
    return out


def _expose_each(state_tag: str, app: str, hosts: Mapping[str, Host], forwards: Sequence[ServiceForward],
                 by_key: Mapping[tuple[str, int, str], Exposure], log_dir: Path, out: list[Exposure]) -> None:
    for fw in forwards:
        tag = relay_tag(state_tag, app, fw.vm, fw.port, fw.protocol)
        kept = by_key.get((fw.vm, fw.port, fw.protocol))
        for pid in _strays(tag, int(kept.extra.get("pid") or 0) if kept else None):
            _end_pid(pid, fw.vm)
        ns = hosts[fw.host].ref
        cur = kept
        if (cur is not None and _is_ours(cur) and cur.target == fw.target
                and cur.extra.get("namespace") == ns
                and (fw.host_port is None or fw.host_port == cur.host_port)):
            out.append(cur)
            continue
        port = fw.host_port or 0
        if cur is not None:
            end(cur)
            port = fw.host_port or cur.host_port  # the user keeps the port they were shown
        try:
            out.append(start(fw, ns, tag, log_dir, port))
        except ProviderError:
            if fw.host_port is not None or port == 0:
                raise
            out.append(start(fw, ns, tag, log_dir, 0))  # the old port is taken now: another one


def unexpose(state_tag: str, app: str, current: Sequence[Exposure]) -> None:
    for e in current:
        end(e)
    for pid in _strays(relay_tag(state_tag, app, "", 0, "").rsplit("/", 3)[0] + "/", None, prefix=True):
        _end_pid(pid)
