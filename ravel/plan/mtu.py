"""How large a guest's frames may be on each provider: pure arithmetic over the underlay MTU.

Every application network is a VXLAN segment: a guest frame of MTU bytes (its IP packet) crosses
the underlay as an IP packet of MTU + 50 bytes (outer IPv4 20, UDP 8, VXLAN 8, the inner
Ethernet header 14). So a network's `mtu` fits a provider when its underlay carries that much.
"""

from __future__ import annotations

from ..errors import Problem
from ..model.blueprint import Blueprint

VXLAN_OVERHEAD = 50
GUEST_MTU_DEFAULT = 1500
GUEST_MTU_MAX = 9000  # the blueprint's own limit (vmxnet3's largest MTU, the usual jumbo size)

# The largest IP packet each provider's underlay carries between two hosts, and why.
UNDERLAY_MTU = {
    "local": 9050,  # veth pairs and a Linux bridge in namespaces: made this size by the provider
    "aws": 9001,  # EC2 jumbo frames inside a VPC
    "gcp": 8896,  # the largest MTU a GCP VPC network allows (ravel makes its network with it)
}
WHY = {
    "local": "the local underlay is made to carry 9050-byte packets",
    "aws": "an AWS VPC carries at most 9001-byte packets (jumbo frames)",
    "gcp": "a GCP VPC network carries at most 8896-byte packets",
}


def underlay_mtu(provider: str) -> int:
    return UNDERLAY_MTU.get(provider, GUEST_MTU_DEFAULT + VXLAN_OVERHEAD)


def max_guest_mtu(provider: str) -> int:
    """The largest `networks.<n>.mtu` a provider carries end to end."""
    return min(GUEST_MTU_MAX, underlay_mtu(provider) - VXLAN_OVERHEAD)


def host_underlay_mtu(network_mtus: list[int]) -> int:
    """What a host's underlay device must carry for the networks it holds (never below what
    1500-byte guests need)."""
    return max([GUEST_MTU_DEFAULT, *network_mtus]) + VXLAN_OVERHEAD


def check_mtu(bp: Blueprint, provider: str) -> list[Problem]:
    """Networks whose MTU the provider's underlay cannot carry, each with the reason."""
    most = max_guest_mtu(provider)
    problems = []
    for net in bp.networks:
        if net.mtu > most:
            path = f"networks.{net.name}.mtu"
            problems.append(Problem(
                bp.source, *bp.where(path), path,
                f"{net.mtu} is more than {provider} carries: {WHY.get(provider, 'its underlay')}, and "
                f"VXLAN takes {VXLAN_OVERHEAD} of them, so guests get at most {most}"))
    return problems
