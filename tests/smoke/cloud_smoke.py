"""Opt-in smoke test against a REAL cloud account: `make cloud-smoke PROVIDER=aws|gcp`.

It costs money (one small instance for a few minutes) and needs the network, so it is never
collected by pytest and never runs in CI. It checks what the fakes cannot: that a real host
boots from ravel's boot data, answers SSH with the pinned host key, raised its MTU, and what it
really is (hypervisor as the cloud reports it and as the host sees it; KVM really working).
Everything it makes is removed at the end, even on failure, and then `gc` must find nothing.

    RAVEL_CLOUD_SMOKE=1 .venv/bin/python tests/smoke/cloud_smoke.py --provider aws [--type c8i.large]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ravel.paths import paths as make_paths
from ravel.providers import get_provider
from ravel.providers.base import HostSpec
from ravel.run.provision import make_hosts, reach_hosts
from ravel.transport.hostctl import HostRuntime, bundle

DEFAULT_TYPE = {"aws": "c8i.large", "gcp": "n2-standard-2"}
BOOT_BUDGET_S = 900.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", required=True, choices=sorted(DEFAULT_TYPE))
    parser.add_argument("--type", help="host type (default: a small one with nested virtualization)")
    args = parser.parse_args()
    if os.environ.get("RAVEL_CLOUD_SMOKE") != "1":
        sys.exit("this creates real, billed resources: set RAVEL_CLOUD_SMOKE=1 (or use `make cloud-smoke`)")
    paths = make_paths()
    app = f"smoke{os.getpid()}"
    provider = get_provider(args.provider, paths)
    provider.preflight()
    spec = HostSpec(app, "host-1", 1, args.type or DEFAULT_TYPE[args.provider], token=f"{app}-1",
                    deadline=time.monotonic() + BOOT_BUDGET_S)
    ok = False
    try:
        started = time.monotonic()
        host = make_hosts(provider, [spec])["host-1"]
        print(f"made {host.ref} ({host.extra.get('instance_type')}, {host.address} / {host.extra.get('public_ip')}) "
              f"in {time.monotonic() - started:.0f} s; cloud says hypervisor={host.extra.get('hypervisor')}")
        report = reach_hosts({"host-1": host}, provider.transport, time.monotonic() + BOOT_BUDGET_S)["host-1"]
        print(f"ready after {time.monotonic() - started:.0f} s: {json.dumps(report)}")
        assert report["status"] == "ready" and report["mtu"] >= 1550, report
        transport = provider.transport(host)
        remote = "/var/lib/ravel/ravel-host.pyz"
        transport.put(bundle(paths.cache), remote)
        facts = HostRuntime(transport, remote, python="python3").facts()
        print(f"host facts: kvm={facts['kvm']} qemu={facts['qemu']} cpus={facts['cpus']} "
              f"memory={facts['memory_mib']} MiB kernel={facts['kernel']}")
        ok = True
    finally:
        provider.delete_host(app, "host-1", 1)
        provider.cleanup()
        left = [line for line in provider.garbage(set()) if app in line]  # type: ignore[attr-defined]
        print("removed everything" if not left else f"LEFT BEHIND: {left}")
        ok = ok and not left
    print("cloud smoke: " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
