"""The local provider: every host is a Linux network namespace on this machine.

Hosts hang off an underlay bridge that lives in a namespace of its own (`rvul-<tag>`), with
addresses from 198.18.0.0/15, the benchmarking range; nothing touches the machine's real
interfaces, and no packet leaves these namespaces.

Hosts are reached with `ip netns exec` ("netns", the default) or over SSH ("ssh"): then every
host runs its own sshd on its underlay address, and this machine reaches the underlay through
one veth from the root namespace (`rvul<tag>`, 198.19.255.254/15, nothing else on it: no other
address, no default route), which goes away with the underlay namespace.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .. import keys
from ..errors import CommandFailed, EnvironmentProblem, ProviderError
from ..paths import Paths
from ..plan.mtu import underlay_mtu
from ..plan.network import ServiceForward, underlay_address
from ..transport.base import Transport
from ..transport.netns import NamespaceTransport
from . import local_expose, local_sshd
from .base import Exposure, FoundHost, Host, HostSpec

UNDERLAY_PREFIX = 15
UNDERLAY_BRIDGE = "ul0"
HOST_DEVICE = "ul0"
UNDERLAY_MTU = underlay_mtu("local")  # like a cloud VPC with jumbo frames: 9000-byte guests plus VXLAN;
# the host runtime raises each host's end to what its networks need (1550 for 1500-byte guests)
HOST_DEVICE_MTU = 1500
KILL_WAIT_S = 5.0
# this machine's end of the underlay in SSH mode: the last address of 198.18.0.0/15, which no
# host gets (host ids stop one short of it)
ROOT_ADDRESS = "198.19.255.254"
ROOT_PEER = "rvroot"  # its other end, a port of the underlay bridge
# Every host of this machine takes its address from HOST_RANGE (host ids 1..65535, unique
# across the apps of a RAVEL_HOME); the rest of 198.19.0.0/16 is left to namespaces that play
# the outside world (the e2e tests' "internet" at 198.19.254.1). Guests' NAT'd traffic never
# reaches GUEST_DENY: no other app's host (its sshd, its VXLAN port) and not this machine.
HOST_RANGE = "198.18.0.0/16"
GUEST_DENY = (HOST_RANGE, f"{ROOT_ADDRESS}/32")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise EnvironmentProblem("the `ip` command is missing", hint="apt-get install iproute2") from None
    if check and proc.returncode != 0:
        raise CommandFailed("local", ["ip", *args], proc.returncode, proc.stderr)
    return proc


def namespaces() -> set[str]:
    out = _ip("netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def namespace_for(app: str, host: str) -> str:
    return f"rv-{app}-{host}"


def stray_qemus(run_dir: Path) -> Callable[[], list[int]]:
    """A lister of the QEMU processes started with a pidfile in `run_dir` (by /proc)."""
    prefix = str(run_dir).rstrip("/") + "/"

    def pids() -> list[int]:
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                args = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-pidfile" in args[:-1]:
                target = args[args.index(b"-pidfile") + 1].decode(errors="replace")
                if target.startswith(prefix):
                    found.append(int(d.name))
        return found

    return pids


class LocalProvider:
    name = "local"
    transports = ("netns", "ssh")
    lifetime = "reaper"  # a detached process on this machine (run/reaper.py)

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.underlay = f"rvul-{paths.tag}"
        self.root_link = f"rvul{paths.tag}"  # in the root namespace: SSH mode only
        self.keys = keys.directory(paths.state)
        self._underlay_lock = threading.Lock()  # hosts are made in parallel; the underlay once

    def preflight(self) -> None:
        if os.geteuid() != 0:
            raise EnvironmentProblem("the local provider needs root (it creates network namespaces and taps)",
                                     hint="run ravel with sudo, or as root")
        if shutil.which("ip") is None:
            raise EnvironmentProblem("the `ip` command is missing", hint="apt-get install iproute2")
        for tool, pkg in (("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils")):
            if shutil.which(tool) is None:
                raise EnvironmentProblem(f"{tool} is not installed", hint=f"apt-get install {pkg}")

    # -- underlay ----------------------------------------------------------------------------
    def _ensure_underlay(self) -> None:
        with self._underlay_lock:
            self._make_underlay()

    def _make_underlay(self) -> None:
        ul = self.underlay
        if ul not in namespaces():
            _ip("netns", "add", ul)
        links = _ip("-n", ul, "-o", "link", "show").stdout
        if f": {UNDERLAY_BRIDGE}:" not in links:
            _ip("-n", ul, "link", "add", UNDERLAY_BRIDGE, "mtu", str(UNDERLAY_MTU), "type", "bridge")
        # an underlay made by an older ravel (9000) is raised to what 9000-byte guests need
        _ip("-n", ul, "link", "set", UNDERLAY_BRIDGE, "mtu", str(UNDERLAY_MTU), "up")
        _ip("-n", ul, "link", "set", "lo", "up")

    def _ensure_root_link(self) -> None:
        """The one link in the root namespace, so paramiko here reaches each host's sshd."""
        with self._underlay_lock:
            if _ip("link", "show", "dev", self.root_link, check=False).returncode != 0:
                _ip("-n", self.underlay, "link", "del", ROOT_PEER, check=False)  # half-made before
                _ip("link", "add", self.root_link, "type", "veth", "peer", "name", ROOT_PEER, "netns", self.underlay)
            # no IPv6 link-local address either: the link carries 198.18.0.0/15 and nothing else
            _ip("link", "set", "dev", self.root_link, "addrgenmode", "none")
            addrs = _ip("-o", "addr", "show", "dev", self.root_link).stdout
            if f" {ROOT_ADDRESS}/{UNDERLAY_PREFIX} " not in addrs:
                _ip("addr", "replace", f"{ROOT_ADDRESS}/{UNDERLAY_PREFIX}", "dev", self.root_link)
            _ip("link", "set", "dev", self.root_link, "up")
            _ip("-n", self.underlay, "link", "set", ROOT_PEER, "master", UNDERLAY_BRIDGE, "up")

    # -- hosts -------------------------------------------------------------------------------
    def ensure_host(self, spec: HostSpec) -> Host:
        mode = spec.transport or self.transports[0]
        if mode not in self.transports:
            raise ProviderError(f"the local provider reaches hosts by {' or '.join(self.transports)}, not {mode!r}")
        address = str(underlay_address(spec.host_id))
        if ipaddress.ip_address(address) not in ipaddress.ip_network(HOST_RANGE):
            raise ProviderError(f"{spec.name}: host id {spec.host_id} is past the local underlay's "
                                f"{HOST_RANGE} (more than 65535 hosts in one RAVEL_HOME)",
                                hint="destroy apps you no longer need, or use another RAVEL_HOME")
        if mode == "ssh":
            local_sshd.check_installed()  # before anything is made
            if address == ROOT_ADDRESS:
                raise ProviderError(f"{spec.name}: host id {spec.host_id} would take this machine's underlay address")
        self._ensure_underlay()
        ns = namespace_for(spec.app, spec.name)
        peer = f"rvh{spec.host_id}"
        owner = self._peer_namespace(peer)
        if owner is not None and owner != ns:
            # host ids come from the state: one that lost an app hands its ids out again
            raise ProviderError(f"{spec.name}: host id {spec.host_id} ({peer}) is still in use by namespace "
                                f"{owner}, of an app this state does not know",
                                hint="`ravel doctor --repair-state` takes that app back into the state")
        if ns not in namespaces():
            _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        host_links = _ip("-n", ns, "-o", "link", "show").stdout
        if f": {HOST_DEVICE}@" not in host_links and f": {HOST_DEVICE}:" not in host_links:
            _ip("-n", self.underlay, "link", "del", peer, check=False)  # a half-made pair from an interrupted run
            _ip("-n", self.underlay, "link", "add", peer, "mtu", str(UNDERLAY_MTU), "type", "veth",
                "peer", "name", HOST_DEVICE, "netns", ns, "mtu", str(HOST_DEVICE_MTU))
            self._forget_neighbour(spec.app, address)
        _ip("-n", self.underlay, "link", "set", peer, "mtu", str(UNDERLAY_MTU), "master", UNDERLAY_BRIDGE, "up")
        addrs = _ip("-n", ns, "-o", "addr", "show", "dev", HOST_DEVICE).stdout
        if f" {address}/{UNDERLAY_PREFIX} " not in addrs:
            _ip("-n", ns, "addr", "replace", f"{address}/{UNDERLAY_PREFIX}", "dev", HOST_DEVICE)
        _ip("-n", ns, "link", "set", HOST_DEVICE, "up")
        run_root = str(self.paths.app_run(spec.app) / spec.name)
        extra: dict[str, object] = {"namespace": ns}
        if mode == "ssh":
            extra["ssh"] = self._ensure_sshd(spec, ns, address)
        return Host(spec.app, spec.name, ns, address, HOST_DEVICE, run_root, extra, guest_deny=tuple(GUEST_DENY))

    def _forget_neighbour(self, app: str, address: str) -> None:
        """A new host's device has a new MAC, but host ids (and so addresses) are reused: whoever
        talked to a removed host at this address would keep sending to its MAC until ARP gives
        the entry up (tens of seconds: an SSH connect hung, VXLAN to the host was lost). A
        gratuitous ARP from the host is no help: its bridge port is not forwarding yet when the
        device comes up. So forget the address where it can be known: this machine's link and
        the app's other hosts (no other app's host sends to it)."""
        if _ip("link", "show", "dev", self.root_link, check=False).returncode == 0:
            _ip("neigh", "flush", "to", address, "dev", self.root_link, check=False)
        for other in namespaces():
            if other.startswith(f"rv-{app}-"):
                _ip("-n", other, "neigh", "flush", "to", address, check=False)

    def _ensure_sshd(self, spec: HostSpec, ns: str, address: str) -> dict[str, object]:
        """Start the host's sshd with its boot data (host key, ravel's login key); returns how
        to reach it, as kept in Host.extra["ssh"] (nothing secret)."""
        self._ensure_root_link()
        key_file, user_public = keys.user_key(self.keys)  # first: its folder is then made 0700
        host_key = keys.host_key(self.keys, spec.app, spec.name)
        files = local_sshd.files_for(self.paths.app_run(spec.app), spec.name)
        local_sshd.install(files, address, host_key.private_openssh, user_public)
        local_sshd.start(files, ns, spec.name)
        return {"address": address, "port": 22, "user": "root", "host_key": host_key.public_line,
                "key_file": str(key_file), "device": self.root_link}

    def transport(self, host: Host) -> Transport:
        ssh = host.extra.get("ssh")
        if ssh:
            from ..transport.ssh import SSHTransport  # paramiko only when a host needs it

            return SSHTransport.from_spec(host.name, ssh)
        return NamespaceTransport(host.name, host.ref)

    def delete_host(self, app: str, name: str, host_id: int) -> None:
        ns = namespace_for(app, name)
        local_sshd.remove(local_sshd.files_for(self.paths.app_run(app), name))  # SSH mode: by its pid
        if ns in namespaces():
            self._kill_namespace_processes(ns)
            # the underlay pair first, explicitly: with the namespace it would go only some time
            # after `ip netns del` returns, and the underlay is dropped once no pair is left
            _ip("-n", ns, "link", "del", HOST_DEVICE, check=False)
            _ip("netns", "del", ns, check=False)
        # a QEMU whose namespace went without it (deleted by hand, or by a run killed halfway)
        # is found by the pidfile it was started with, under this host's run directory
        self._end_pids(stray_qemus(self.paths.app_run(app) / name), f"QEMU of {app}/{name}")
        if self.underlay in namespaces() and self._peer_namespace(f"rvh{host_id}") in (None, ns):
            # (not when it leads into another app's host: a state that lost that app gave its id out again)
            _ip("-n", self.underlay, "link", "del", f"rvh{host_id}", check=False)
        keys.forget_host_key(self.keys, app, name)

    def _kill_namespace_processes(self, ns: str) -> None:
        # QEMU processes keep a namespace alive after `ip netns del`; they are ours (they run in
        # a namespace we made), so end them by PID: TERM, a bounded wait, then KILL.
        def pids() -> list[int]:
            out = _ip("netns", "pids", ns, check=False).stdout
            return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]

        self._end_pids(pids, f"namespace {ns}")

    def _end_pids(self, pids: Callable[[], list[int]], where: str) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            live = pids()
            if not live:
                return
            for pid in live:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + KILL_WAIT_S
            while time.monotonic() < deadline and pids():
                time.sleep(0.05)
        if pids():
            raise ProviderError(f"processes {pids()} of {where} did not exit")

    # -- exposed services (ServiceExposer): relays on 127.0.0.1, see local_expose -----------
    def expose(self, app: str, hosts: Mapping[str, Host], forwards: Sequence[ServiceForward],
               current: Sequence[Exposure]) -> list[Exposure]:
        return local_expose.expose(self.paths.tag, app, hosts, forwards, current,
                                   self.paths.app_run(app) / "services")

    def unexpose(self, app: str, current: Sequence[Exposure]) -> None:
        local_expose.unexpose(self.paths.tag, app, current)

    def found_hosts(self, app: str | None = None) -> list[FoundHost]:
        """Every host namespace on this machine that hangs off this set-up's underlay (the
        namespace names carry app and host; the underlay, which RAVEL_HOME they belong to);
        only app `app`'s when given. A namespace that merely has such a name is none of them."""
        pattern = re.compile(rf"^rv-({re.escape(app) if app else '.+'})-(host-\d+)$")
        out = []
        for ns in sorted(namespaces()):
            m = pattern.match(ns)
            if not m or self._underlay_of(ns) != self.underlay:
                continue
            address, host_id = self._underlay_address_of(ns)
            out.append(FoundHost(m.group(1), m.group(2), ns, address, host_id, self._vnis_in(ns)))
        return out

    def _peer_namespace(self, peer: str) -> str | None:
        """The live, named namespace the other end of underlay port `peer` is in, if any."""
        return self._other_end(self.underlay, peer)

    def _underlay_of(self, ns: str) -> str | None:
        """The namespace at the other end of the host's underlay device, by name."""
        return self._other_end(ns, HOST_DEVICE)

    @staticmethod
    def _other_end(ns: str, device: str) -> str | None:
        try:
            link = json.loads(_ip("-n", ns, "-j", "link", "show", "dev", device, check=False).stdout or "[]")
            nsid = link[0].get("link_netnsid") if link else None
        except (ValueError, IndexError, TypeError, AttributeError):
            return None
        if nsid is None:
            return None
        for line in _ip("-n", ns, "netns", "list-id", check=False).stdout.splitlines():
            m = re.match(rf"nsid {int(nsid)} \(iproute2 netns name: (\S+)\)", line.strip())
            if m:
                return m.group(1)
        return None

    def _underlay_address_of(self, ns: str) -> tuple[str, int]:
        """The host's underlay address and the host id it encodes (0: none)."""
        try:
            doc = json.loads(_ip("-n", ns, "-j", "addr", "show", "dev", HOST_DEVICE, check=False).stdout or "[]")
            addrs = [a["local"] for a in doc[0].get("addr_info", []) if a.get("family") == "inet"] if doc else []
        except (ValueError, KeyError, IndexError, TypeError):
            addrs = []
        for a in addrs:
            ip = ipaddress.ip_address(a)
            if ip in ipaddress.ip_network(HOST_RANGE):
                return a, int(ip) - int(ipaddress.ip_address("198.18.0.0"))
        return "", 0

    def _vnis_in(self, ns: str) -> tuple[int, ...]:
        try:
            doc = json.loads(_ip("-n", ns, "-j", "-d", "link", "show", "type", "vxlan", check=False).stdout or "[]")
            return tuple(sorted({int(d["linkinfo"]["info_data"]["id"]) for d in doc}))
        except (ValueError, KeyError, TypeError):
            return ()

    def leftover_hosts(self, app: str) -> list[str]:
        pattern = re.compile(rf"^rv-{re.escape(app)}-(host-\d+)$")
        return sorted(m.group(1) for m in map(pattern.match, namespaces()) if m)

    def cleanup(self) -> None:
        """Drop the underlay namespace, and this machine's link into it, once no host is attached."""
        if self.underlay in namespaces():
            links = _ip("-n", self.underlay, "-o", "link", "show", check=False).stdout
            if " rvh" in links:
                return
        # the root end first, and explicitly: a namespace's devices go away only some time
        # after `ip netns del` returns, and the link must be gone when destroy says it is done
        with self._underlay_lock:
            if _ip("link", "show", "dev", self.root_link, check=False).returncode == 0:
                _ip("link", "del", self.root_link, check=False)
            if self.underlay in namespaces():
                _ip("netns", "del", self.underlay, check=False)
        run = Path(self.paths.run)
        if run.is_dir() and not any(run.iterdir()):
            run.rmdir()
