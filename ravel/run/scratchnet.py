"""The network part of `ravel doctor`: in a scratch network namespace of its own, make what a
host makes (ravel/host/reconcile.py: an underlay link with the raised MTU, a bridge, a VXLAN
device on it with a head-end replication entry, a tap) and an nftables table, then remove the
namespace, and with it everything in it. Nothing is sent anywhere: the namespace has no link to
the outside, and its only address is one of the local provider's underlay (198.18.0.0/15).

Each command is bounded; the whole check takes a fraction of a second.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

from .checks import Check

STEP_TIMEOUT = 10.0
UNDERLAY_MTU = "1550"  # what the local provider gives its underlay (VXLAN costs 50 bytes)
ADDRESS = "198.18.0.1/15"


def scratch_network() -> list[Check]:
    """Two checks: `network` (ip, bridge, VXLAN, tap, veth) and `nftables`."""
    if os.geteuid() != 0:
        why = "not checked: making a network namespace needs root"
        return [Check("network", False, True, why, "run ravel as root (sudo ravel ...)"),
                Check("nftables", False, True, why, "run ravel as root (sudo ravel ...)")]
    missing = [(t, p) for t, p in (("ip", "iproute2"), ("bridge", "iproute2")) if not shutil.which(t)]
    if missing:
        return [Check("network", False, True, f"{missing[0][0]} is not installed",
                      "apt-get install iproute2"), _nft_missing_or(None)]
    ns = f"rvdoctor-{os.getpid()}-{secrets.token_hex(3)}"
    failed = _step(["ip", "netns", "add", ns])
    if failed:
        return [Check("network", False, True, f"cannot make a network namespace: {failed}",
                      "a kernel with network namespaces (CONFIG_NET_NS), as root"),
                _nft_missing_or(None)]
    try:
        return [_links(ns), _nft_missing_or(ns)]
    finally:
        # every link, address and table of the check goes with the namespace
        _step(["ip", "netns", "del", ns])


# (what, argv in the namespace, fix when it fails)
_LINK_STEPS = (
    ("veth", "ip link add rvd0 mtu {mtu} type veth peer name rvd1 mtu {mtu}", "modprobe veth"),
    ("address", "ip addr add {address} dev rvd0", ""),
    ("veth up", "ip link set rvd0 up", ""),
    ("bridge", "ip link add rvdbr type bridge mcast_snooping 0", "modprobe bridge"),
    ("VXLAN", "ip link add rvdvx type vxlan id 4242 local {local} dstport 4789 nolearning",
     "modprobe vxlan (a kernel with CONFIG_VXLAN)"),
    ("VXLAN on the bridge", "ip link set dev rvdvx master rvdbr", ""),
    ("VXLAN up", "ip link set dev rvdvx up", ""),
    ("head-end replication entry", "bridge fdb append 00:00:00:00:00:00 dev rvdvx dst 198.18.0.2", ""),
    ("tap", "ip tuntap add dev rvdtap mode tap", "modprobe tun (QEMU's NICs need /dev/net/tun)"),
    ("tap on the bridge", "ip link set dev rvdtap master rvdbr", ""),
    ("bridge up", "ip link set dev rvdbr up", ""),
)


def _links(ns: str) -> Check:
    local = ADDRESS.split("/")[0]
    for what, command, fix in _LINK_STEPS:
        argv = command.format(mtu=UNDERLAY_MTU, address=ADDRESS, local=local).split()
        failed = _step(["ip", "netns", "exec", ns, *argv])
        if failed:
            return Check("network", False, True, f"{what} in a scratch namespace: {failed}",
                         fix or "apt-get install iproute2")
    return Check("network", True, True,
                 "namespace, veth (MTU 1550), bridge, VXLAN with a replication entry, tap: all made")


def _nft_missing_or(ns: str | None) -> Check:
    if not shutil.which("nft"):
        return Check("nftables", False, True, "nft is not installed (each app's fence, routing, "
                     "NAT and firewall)", "apt-get install nftables")
    if ns is None:
        return Check("nftables", False, True, "not checked: no scratch namespace",
                     "fix the network check first")
    failed = _step(["ip", "netns", "exec", ns, "nft", "add", "table", "inet", "ravel_doctor"])
    if failed:
        return Check("nftables", False, True, f"a table in a scratch namespace: {failed}",
                     "modprobe nf_tables (a kernel with CONFIG_NF_TABLES)")
    return Check("nftables", True, True, "made a table in a scratch namespace")


def _step(argv: list[str]) -> str:
    """'' when the command succeeded, else why not (one line)."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT,
                           stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return f"`{' '.join(argv)}` did not finish within {STEP_TIMEOUT:g} s"
    if p.returncode == 0:
        return ""
    return f"`{' '.join(argv)}` failed: {(p.stderr or p.stdout).strip()[:200]}"
