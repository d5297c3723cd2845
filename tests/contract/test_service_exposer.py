"""One contract for every ServiceExposer (a provider that exposes guests' services): what is
exposed is open exactly where the exposure says, re-exposing the same services changes nothing,
a service that leaves is closed, and unexpose ends everything, records lost or not.

Implementations: the local provider (relays on 127.0.0.1 into a real host namespace; the
"guest" is a small server inside the host namespace on an address of a portless bridge there,
which is all a relay needs to see; no QEMU), AWS (security-group rules, against moto's server)
and GCP (firewall rules, the real client library against tests/fakes/gce.py). On clouds the
port itself is forwarded by the host runtime (tests/e2e/test_network_services.py drives that
with real guests); here the provider's half: which port is opened, to whom.

Tests named `test_local_*` are about relays and run against the local provider only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from ravel.paths import paths
from ravel.plan.network import ServiceForward
from ravel.providers.base import HostSpec, ServiceExposer
from ravel.providers.local import LocalProvider, namespaces

APP = f"se{os.getpid()}"  # the local-only tests' app
CAPP = f"sec{os.getpid()}"  # the contract's app, on every implementation
GUEST = "10.77.0.5"
USER = "198.51.100.7/32"  # --ssh-from: where the cloud rules admit services without an `allow`
MUTATING = re.compile(r"^(Create|Run|Import|Authorize|Revoke|Terminate|Delete|Start|Stop|Modify|Attach|Detach)")
SERVER = r"""
import socket, sys, threading
addr = sys.argv[1]
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((addr, 8080)); t.listen(8)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((addr, 5353))
def udp():
    while True:
        data, peer = u.recvfrom(2048); u.sendto(b"udp:" + data, peer)
threading.Thread(target=udp, daemon=True).start()
t.settimeout(300)
while True:
    c, peer = t.accept(); c.sendall(b"tcp:" + c.recv(100)); c.close()
"""


@dataclass
class World:
    provider: Any
    hosts: dict
    opened: Callable[[], set]  # {(protocol, port, source)} open now for the app's services
    changes: Callable[[], Any]  # what any change to the exposures moves (a call count, pids)


def _local(tmp_path_factory, app: str = CAPP):
    if os.geteuid() != 0:
        pytest.fail("service exposure contract tests need root (network namespaces)")
    provider = LocalProvider(paths({"RAVEL_HOME": str(tmp_path_factory.mktemp("home"))}))
    server = None
    try:
        host = provider.ensure_host(HostSpec(app, "host-1", 1, "local-small"))
        ns = host.ref
        subprocess.run(["ip", "-n", ns, "link", "add", "g0", "type", "bridge"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{GUEST}/24", "dev", "g0"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "g0", "up"], check=True)
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, GUEST],
                                  stdin=subprocess.DEVNULL)
        pids = lambda: sorted(p for p, _ in _relays(provider, app))
        yield World(provider, {"host-1": host}, lambda: {o for _, o in _relays(provider, app)}, pids)
    finally:
        provider.unexpose(app, [])
        if server is not None:
            server.kill()
            server.wait(timeout=10)
        provider.delete_host(app, "host-1", 1)
        shutil.rmtree(provider.paths.app_run(app), ignore_errors=True)  # the relays' logs
        provider.cleanup()  # after: it removes the run directory once it is empty, as destroy does
        assert not provider.paths.run.exists(), "the run directory is left behind"
        left = [ns for ns in namespaces() if ns.startswith(f"rv-{app}-")]
        assert not left, f"left behind: {left}"


def _relays(provider, app: str) -> set:
    """(pid, (protocol, port, "127.0.0.1")) of the app's live relays' listening sockets, from
    /proc (their argv and fds)."""
    from ravel.providers import local_expose, relay

    tag = local_expose.relay_tag(provider.paths.tag, app, "", 0, "").rsplit("/", 3)[0] + "/"
    inodes: dict[str, tuple[int, str]] = {}
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if len(cmd) < 4 or cmd[1] != relay.__file__ or not any(c.startswith(tag) for c in cmd):
            continue
        proto = cmd[cmd.index("--protocol") + 1]
        try:
            links = [os.readlink(fd) for fd in (d / "fd").iterdir()]
        except OSError:
            continue  # it just ended
        for link in links:
            m = re.match(r"socket:\[(\d+)\]", link)
            if m:
                inodes[m.group(1)] = (int(d.name), proto)
    out = set()
    for proto in ("tcp", "udp"):
        for line in Path(f"/proc/self/net/{proto}").read_text().splitlines()[1:]:
            f = line.split()
            pid, kind = inodes.get(f[9], (0, ""))
            if kind == proto and (proto == "udp" or f[3] == "0A"):
                out.add((pid, (proto, int(f[1].split(":")[1], 16), "127.0.0.1")))
    return out


def _cloud_hosts(provider) -> dict:
    return {f"host-{i}": provider.ensure_host(HostSpec(CAPP, f"host-{i}", i, TYPES[provider.name],
                                                       token=f"{CAPP}-{i}")) for i in (1, 2)}


TYPES = {"aws": "c8i.large", "gcp": "n2-standard-2"}


def _cloud_teardown(provider) -> None:
    provider.unexpose(CAPP, [])
    for i in (1, 2):
        provider.delete_host(CAPP, f"host-{i}", i)
    provider.cleanup()
    assert provider.garbage(set()) == []  # nothing of this state remains on the cloud


def _aws(tmp_path_factory):
    from tests.contract.test_provider import _aws as make_aws
    from tests.contract.test_provider import _Env

    env = _Env()
    home = tmp_path_factory.mktemp("aws")
    log = home / "calls.jsonl"
    gen = make_aws(home, env, log=str(log))
    try:
        provider = next(gen)
        env.set(RAVEL_SSH_FROM=USER)
        provider.preflight()
        hosts = _cloud_hosts(provider)

        def opened() -> set:
            out = set()
            for g in provider._groups(CAPP):
                for perm in g.get("IpPermissions", []):
                    for r in perm.get("IpRanges", []):
                        if r.get("Description") == "ravel: exposed service":
                            out.add((perm["IpProtocol"], perm["FromPort"], r["CidrIp"]))
            return out

        def mutations() -> int:
            return sum(1 for line in log.read_text().splitlines()
                       if line.strip() and MUTATING.match(json.loads(line)["action"]))

        yield World(provider, hosts, opened, mutations)
        _cloud_teardown(provider)
    finally:
        gen.close()
        env.restore()


def _gcp(tmp_path_factory):
    from tests.contract.test_provider import _Env
    from tests.contract.test_provider import _gcp as make_gcp

    env = _Env()
    gen = make_gcp(tmp_path_factory.mktemp("gcp"), env, keep_fake=True)
    try:
        provider, fake = next(gen)
        env.set(RAVEL_SSH_FROM=USER)
        provider.preflight()
        hosts = _cloud_hosts(provider)

        def opened() -> set:
            return {(a["IPProtocol"], int(port), src) for name, rule in fake.firewalls.items() if "-svc-" in name
                    for a in rule["allowed"] for port in a["ports"] for src in rule["sourceRanges"]}

        def mutations() -> int:
            return sum(1 for r in fake.requests if r.method in ("POST", "PATCH", "DELETE") and r.path != "/token")

        yield World(provider, hosts, opened, mutations)
        _cloud_teardown(provider)
    finally:
        gen.close()
        env.restore()


IMPLEMENTATIONS = {"local": _local, "aws": _aws, "gcp": _gcp}


@pytest.fixture(scope="module", params=sorted(IMPLEMENTATIONS))
def any_world(request, tmp_path_factory):
    gen = IMPLEMENTATIONS[request.param](tmp_path_factory)
    try:
        world = next(gen)
        assert isinstance(world.provider, ServiceExposer)
        yield world
    finally:
        try:
            next(gen)
        except StopIteration:
            pass
        gen.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The local provider only (relays on 127.0.0.1)."""
    gen = _local(tmp_path_factory, APP)
    try:
        w = next(gen)
        yield w.provider, w.hosts
    finally:
        try:
            next(gen)
        except StopIteration:
            pass
        gen.close()


def _forwards(world: World) -> list[ServiceForward]:
    last = sorted(world.hosts)[-1]
    return [ServiceForward("v", "host-1", 8080, "tcp", GUEST), ServiceForward("v", "host-1", 5353, "udp", GUEST),
            ServiceForward("w", last, 8080, "tcp", GUEST)]


def _expected(world: World, exposed) -> set:
    local = world.provider.name == "local"
    return {(e.protocol, e.host_port, "127.0.0.1" if local else USER) for e in exposed}


def test_exposed_services_are_open_where_the_exposures_say(any_world):
    w = any_world
    fws = _forwards(w)
    exposed = w.provider.expose(CAPP, w.hosts, fws, [])
    try:
        assert [(e.vm, e.port, e.protocol, e.host) for e in exposed] == [(f.vm, f.port, f.protocol, f.host) for f in fws]
        for e in exposed:
            host = w.hosts[e.host]
            assert e.address == ("127.0.0.1" if w.provider.name == "local"
                                 else host.extra.get("public_ip") or host.address)
            assert e.label() == f"{e.address}:{e.host_port}->{e.port}/{e.protocol}"
        assert w.opened() == _expected(w, exposed)
    finally:
        w.provider.unexpose(CAPP, exposed)
    assert w.opened() == set()


def test_exposing_the_same_services_again_changes_nothing(any_world):
    w = any_world
    fws = _forwards(w)
    exposed = w.provider.expose(CAPP, w.hosts, fws, [])
    try:
        before = w.changes()
        assert w.provider.expose(CAPP, w.hosts, fws, exposed) == exposed
        assert w.changes() == before
        assert w.opened() == _expected(w, exposed)
    finally:
        w.provider.unexpose(CAPP, exposed)


def test_a_service_that_leaves_is_closed(any_world):
    w = any_world
    fws = _forwards(w)
    exposed = w.provider.expose(CAPP, w.hosts, fws, [])
    kept = []
    try:
        kept = w.provider.expose(CAPP, w.hosts, fws[:1], exposed)
        assert [(e.vm, e.port, e.protocol) for e in kept] == [("v", 8080, "tcp")]
        assert kept[0].host_port == exposed[0].host_port  # the user keeps the port they were shown
        assert w.opened() == _expected(w, kept)
    finally:
        w.provider.unexpose(CAPP, exposed + kept)
    assert w.opened() == set()


def test_unexpose_ends_everything_even_without_records(any_world):
    w = any_world
    exposed = w.provider.expose(CAPP, w.hosts, _forwards(w), [])
    assert w.opened()
    w.provider.unexpose(CAPP, [])  # as after a publish killed before it saved what it made
    deadline = time.monotonic() + 5
    while w.opened() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.opened() == set(), exposed


def tcp(port: int, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(b"hi")
                data = s.recv(100)
                if data:
                    return data
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return b""
        time.sleep(0.2)


def udp(port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(b"hey", ("127.0.0.1", port))
        try:
            return s.recvfrom(100)[0]
        except OSError:
            return b""


def alive(e) -> bool:
    pid = e.extra.get("pid")
    return bool(pid) and os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().split()[2]


def closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_local_exposed_tcp_and_udp_services_answer_on_loopback(world):
    provider, hosts = world
    fws = [ServiceForward("v", "host-1", 8080, "tcp", GUEST), ServiceForward("v", "host-1", 5353, "udp", GUEST)]
    exposed = provider.expose(APP, hosts, fws, [])
    try:
        assert [(e.vm, e.port, e.protocol, e.address) for e in exposed] == [
            ("v", 8080, "tcp", "127.0.0.1"), ("v", 5353, "udp", "127.0.0.1")]
        assert tcp(exposed[0].host_port) == b"tcp:hi"
        assert udp(exposed[1].host_port) == b"udp:hey"
        assert exposed[0].label() == f"127.0.0.1:{exposed[0].host_port}->8080/tcp"
        # idempotent: the same request changes nothing
        assert provider.expose(APP, hosts, fws, exposed) == exposed
    finally:
        provider.unexpose(APP, exposed)
    # a relay whose memory is already released (so it is no longer "ours") may still be exiting
    deadline = time.monotonic() + 5
    while any(alive(e) for e in exposed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(e) for e in exposed)
    assert closed(exposed[0].host_port)


def test_local_a_fixed_port_is_used_and_a_changed_target_keeps_the_port(world):
    provider, hosts = world
    with socket.socket() as probe:  # a port that is free right now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (first,) = provider.expose(APP, hosts, [ServiceForward("v", "host-1", 8080, "tcp", "10.77.0.9", port)], [])
    try:
        assert first.host_port == port
        assert tcp(port, timeout=2) == b""  # nothing answers at 10.77.0.9
        (second,) = provider.expose(APP, hosts, [ServiceForward("v", "host-1", 8080, "tcp", GUEST, port)], [first])
        assert second.host_port == port and second.extra["pid"] != first.extra["pid"]
        assert not alive(first)
        assert tcp(port) == b"tcp:hi"
    finally:
        provider.unexpose(APP, [first, second] if "second" in locals() else [first])


def test_local_a_taken_fixed_port_is_a_clear_error(world):
    from ravel.errors import ProviderError

    provider, hosts = world
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ProviderError, match=rf"v: cannot listen on 127.0.0.1:{port} for service 8080/tcp"):
            provider.expose(APP, hosts, [ServiceForward("v", "host-1", 8080, "tcp", GUEST, port)], [])


def test_local_unexpose_ends_relays_whose_record_was_lost(world):
    provider, hosts = world
    (e,) = provider.expose(APP, hosts, [ServiceForward("v", "host-1", 8080, "tcp", GUEST)], [])
    assert alive(e)
    provider.unexpose(APP, [])  # as after a publish killed before it saved what it started
    deadline = time.monotonic() + 5
    while alive(e) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(e) and closed(e.host_port)
