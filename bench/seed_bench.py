"""Benchmark of cloud-init seed creation (issue: real guests) against Debian's ISO tool.

A lab of 20 `cloud_init` VMs (two NICs each: DHCP and static, with the user's own user-data, so
the MIME merge is included). Prints, in ms per VM (best of a few runs, the machine is shared):

- ensure_seeds in a fresh RAVEL_HOME: the guest's host key, the files rendered, the ISO written
  (0600, fsync, atomic rename) — what a first publish pays;
- ensure_seeds again: the re-publish, which must write nothing;
- the ISO alone, made by pycdlib in memory from the three files;
- the baseline, measured in the same run: the same three files written to a folder and made
  into an ISO by `genisoimage -V cidata -J -r` (or `xorriso -as mkisofs`) as a subprocess;

and the ratios to the baseline. Target: ensure_seeds <= 50 ms per VM.

Run from the repository root: .venv/bin/python bench/seed_bench.py
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ravel import keys
from ravel.model.resolve import load_blueprint
from ravel.paths import paths as make_paths
from ravel.plan.app import AppPlan, resolve_app
from ravel.plan.catalogue import load_catalogue
from ravel.plan.plan import make_plan
from ravel.render.seed import SeedFiles, seed_files
from ravel.run.seeds import ensure_seeds, instance_id, iso_image

VMS = 20
REPEATS = 5
TARGET_MS = 50.0

USER_DATA = """\
#cloud-config
packages: [nginx, curl]
users:
  - {name: ops, shell: /bin/bash}
runcmd:
  - [systemctl, enable, --now, nginx]
"""


def blueprint() -> str:
    vms = "".join(textwrap.dedent(f"""\
          node-{i:02d}:
            cloud_init: {{user_data: {json.dumps(USER_DATA)}}}
            nics:
              - {{network: lan}}
              - {{network: back, ip: 10.20.0.{10 + i}}}
        """) for i in range(1, VMS + 1))
    return textwrap.dedent("""\
        name: seedbench
        networks:
          lan: {subnet: 10.10.0.0/24, dhcp: true, dns: true, gateway: 10.10.0.1}
          back: {subnet: 10.20.0.0/24, gateway: 10.20.0.1, dns: true, mtu: 9000}
        vms:
        """) + textwrap.indent(vms, "  ")


def lab() -> AppPlan:
    bp = load_blueprint(blueprint(), "seedbench.yaml")
    return resolve_app(bp, "seedbench", make_plan(bp, load_catalogue("local")), {"lan": 4001, "back": 4002})


def best(fn) -> float:  # type: ignore[no-untyped-def]
    t = float("inf")
    for _ in range(REPEATS):
        t = min(t, fn())
    return t


def baseline_tool() -> list[str] | None:
    if shutil.which("genisoimage"):
        return ["genisoimage", "-quiet", "-V", "cidata", "-J", "-r"]
    if shutil.which("xorriso"):
        return ["xorriso", "-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r"]
    return None


def main() -> int:
    ap = lab()
    work_root = ROOT / ".cache"
    work_root.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seed-bench-", dir=work_root) as work:
        work_dir = Path(work)
        homes = iter(range(1000))

        def fresh() -> float:
            home = work_dir / f"home{next(homes)}"
            p = make_paths({"RAVEL_HOME": str(home)})
            keys.user_key(keys.directory(p.state))  # ravel's own login key exists before any lab
            start = time.perf_counter()
            seeds = ensure_seeds(p, ap)
            took = time.perf_counter() - start
            assert len(seeds) == VMS
            return took

        t_fresh = best(fresh)

        again_home = make_paths({"RAVEL_HOME": str(work_dir / "again")})
        first = ensure_seeds(again_home, ap)

        def republish() -> float:
            start = time.perf_counter()
            assert ensure_seeds(again_home, ap) == first
            return time.perf_counter() - start

        t_again = best(republish)

        login = keys.user_key(keys.directory(again_home.state))[1]
        seed_inputs: list[SeedFiles] = []
        for vm in ap.vms:
            pair = keys.guest_key(keys.directory(again_home.state), ap.app, vm.name)
            seed_inputs.append(seed_files(ap, vm.name, instance_id(ap.app, vm.name, pair.public_line), login,
                                          pair, vm.cloud_init.user_data))

        def iso_only() -> float:
            start = time.perf_counter()
            for files in seed_inputs:
                iso_image(files, io.BytesIO())
            return time.perf_counter() - start

        t_iso = best(iso_only)

        tool = baseline_tool()
        t_base = None
        if tool is not None:
            def external() -> float:
                start = time.perf_counter()
                for i, files in enumerate(seed_inputs):
                    src = work_dir / f"src{i}"
                    src.mkdir(exist_ok=True)
                    for name, data in files.files().items():
                        (src / name).write_bytes(data)
                    subprocess.run([*tool, "-o", str(work_dir / f"b{i}.iso"), str(src)], check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                return time.perf_counter() - start

            t_base = best(external)

    per = lambda t: t * 1000 / VMS
    print(f"cloud-init seeds: {VMS} VMs (2 NICs, user-data merged), ms per VM, best of {REPEATS}")
    for label, t in (("ensure_seeds, fresh RAVEL_HOME (keys + render + ISO + write):", t_fresh),
                     ("ensure_seeds again (re-publish, nothing written):", t_again),
                     ("ISO only (pycdlib, in memory):", t_iso)):
        print(f"  {label:<68}{per(t):7.2f}")
    if t_base is not None:
        label = f"baseline: files + `{' '.join(tool)}` subprocess:"
        print(f"  {label:<68}{per(t_base):7.2f}")
        print(f"  ratio ensure_seeds / baseline: {t_fresh / t_base:.2f}; ISO only / baseline: {t_iso / t_base:.2f}")
    else:
        print("  baseline: neither genisoimage nor xorriso is installed; not measured")
    print()
    if per(t_fresh) > TARGET_MS:
        print(f"target NOT met: {per(t_fresh):.2f} ms per VM > {TARGET_MS:g} ms")
        return 1
    print(f"target met: seed creation {per(t_fresh):.2f} ms per VM <= {TARGET_MS:g} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
