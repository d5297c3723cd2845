"""Publish benchmark for the local lab (root, QEMU, the demo guest image built by `make guest`).

Prints: publish time of blueprints/demo.yaml to every guest ready, no-op re-publish time,
destroy time, and iperf3 throughput host-to-host over the VXLAN overlay versus the raw
underlay, both measured in this run between the same two host namespaces.
Targets: publish <= 15 s, no-op <= 2 s, destroy <= 5 s, overlay >= 0.8 x underlay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = f"bench{os.getpid()}"
IPERF_SECONDS = 5


def ravel(home: str, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = dict(os.environ, RAVEL_HOME=home)
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "ravel", *args], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"ravel {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return took, p


def ns_exec(ns: str, *argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=60, **kw)


def iperf(server_ns: str, client_ns: str, address: str) -> float:
    """Gbit/s from client to server, one TCP stream, IPERF_SECONDS long."""
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", address],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = None
        for _ in range(50):  # bounded: the server needs a moment to listen
            p = ns_exec(client_ns, "iperf3", "-c", address, "-t", str(IPERF_SECONDS), "-J")
            data = json.loads(p.stdout) if p.stdout.strip().startswith("{") else {}
            if p.returncode == 0 and "error" not in data:
                out = data
                break
            time.sleep(0.1)
        if out is None:
            raise RuntimeError(f"iperf3 to {address} failed: {p.stderr or p.stdout}")
        return out["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        srv.kill()
        srv.wait(10)


def plug(host_ns: str, bridge: str, ns: str, address: str) -> None:
    """A namespace `ns` whose eth0 is a port of `bridge` in `host_ns`, with `address`; deleting
    `ns` removes the veth pair."""
    mtu = ns_exec(host_ns, "cat", f"/sys/class/net/{bridge}/mtu").stdout.strip()
    for argv in (["ip", "netns", "add", ns],
                 ["ip", "-n", host_ns, "link", "add", f"v{ns[-6:]}", "type", "veth", "peer", "name", "eth0", "netns", ns],
                 ["ip", "-n", host_ns, "link", "set", f"v{ns[-6:]}", "mtu", mtu, "master", bridge, "up"],
                 ["ip", "-n", ns, "link", "set", "eth0", "mtu", mtu, "up"],
                 ["ip", "-n", ns, "addr", "add", address, "dev", "eth0"]):
        subprocess.run(argv, check=True, capture_output=True, timeout=30)


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("the publish benchmark needs root (network namespaces)")
    with tempfile.TemporaryDirectory(prefix="ravel-bench-") as home:
        try:
            t_publish, _ = ravel(home, "publish", "blueprints/demo.yaml", "--name", APP, "--wait", "--timeout", "300")
            t_noop, noop = ravel(home, "publish", "blueprints/demo.yaml", "--name", APP)
            assert "nothing to do" in noop.stdout, noop.stdout
            state = json.loads(ravel(home, "status", APP, "--json")[1].stdout)[APP]
            hosts = sorted({v["host"] for v in state})
            a, b = (f"rv-{APP}-{h}" for h in hosts[:2])
            under_a = ns_exec(a, "ip", "-4", "-o", "addr", "show", "dev", "ul0").stdout.split()[3].split("/")[0]
            raw = iperf(a, b, under_a)
            # one endpoint on each host, plugged into one overlay network's bridge the way a
            # guest's tap is (the hosts' own addresses on app bridges are firewalled from guests):
            # host-to-host through VXLAN
            bridges = [l.split(":")[1].strip().split("@")[0] for l in ns_exec(a, "ip", "-o", "link", "show", "type", "bridge").stdout.splitlines()]
            common = [br for br in bridges if ns_exec(b, "ip", "link", "show", br).returncode == 0]
            br = common[0]
            ends = [(a, f"rvbench{os.getpid()}a", "169.254.77.1/30"), (b, f"rvbench{os.getpid()}b", "169.254.77.2/30")]
            try:
                for host_ns, ns, addr in ends:
                    plug(host_ns, br, ns, addr)
                overlay = iperf(ends[0][1], ends[1][1], "169.254.77.1")
            finally:
                for _, ns, _ in ends:
                    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        finally:
            t_destroy, _ = ravel(home, "destroy", APP, "--yes")
    ratio = overlay / raw
    rows = [
        ("publish demo lab to all guests ready", f"{t_publish:.1f} s", "<= 15 s", t_publish <= 15),
        ("no-op re-publish", f"{t_noop:.2f} s", "<= 2 s", t_noop <= 2),
        ("destroy", f"{t_destroy:.2f} s", "<= 5 s", t_destroy <= 5),
        ("iperf3 host-to-host, raw underlay", f"{raw:.2f} Gbit/s", "", True),
        (f"iperf3 host-to-host, VXLAN overlay ({br})", f"{overlay:.2f} Gbit/s", "", True),
        ("overlay / underlay", f"{ratio:.2f}", ">= 0.80", ratio >= 0.8),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, target, ok in rows:
        mark = "" if not target else ("ok" if ok else "MISSED")
        print(f"{name:<{width}}  {value:>14}  {target:>8}  {mark}")
    print("targets:", "all met" if all(r[3] for r in rows) else "NOT all met")


if __name__ == "__main__":
    main()
