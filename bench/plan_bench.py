"""Benchmark of the placement planner against plain first-fit decreasing.

Generated mixed workloads (seeded, so every run plans the same labs) of 100, 1,000 and 10,000
VMs on the aws and gcp catalogues, and 100 VMs on the local one, in both optimize modes. For
each, prints the wall time and cost / lower bound of ravel's `place` and of
`first_fit_decreasing`, then whether the targets hold:

- 10,000 VMs planned in <= 1 s;
- cost <= 1.03 x lower bound for >= 1,000 VMs on aws and gcp, both modes;
- never costlier than first-fit decreasing.

Then the command users run, end to end: `ravel plan` of generated blueprints of 1,000, 10,000
and 100,000 VMs (YAML files, aws), timed as a separate process beyond the CLI's start-up
(`ravel plan --help`: the same modules loaded, nothing read), beside the planner alone on the same blueprint, and as a ratio to the same
CLI with libyaml hidden (the pure-Python composer, the loader ravel had before and its fallback),
measured in the same run. Targets: 10,000 VMs <= 1 s, 100,000 VMs <= 10 s beyond start-up.

Run from the repository root: .venv/bin/python bench/plan_bench.py [--cli-only]
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ravel.plan.catalogue import load_catalogue
from ravel.plan.placement import Demand, Request, first_fit_decreasing, place

SEED = 20240611
TIME_LIMIT_S = 1.0
RATIO_LIMIT = 1.03

# (value, weight): small VMs are the most common, as in real labs
CLOUD_CPUS = [(1, 25), (2, 30), (4, 25), (8, 15), (16, 5)]
CLOUD_GIB_PER_CPU = [(0.5, 10), (1, 15), (2, 30), (4, 30), (8, 15)]
# local hosts are at most 8 vCPU / 8 GiB, so the local mix stays small
LOCAL_CPUS = [(1, 40), (2, 40), (4, 20)]
LOCAL_GIB_PER_CPU = [(0.25, 30), (0.5, 40), (1, 30)]
NESTED_SHARE = 0.10


def workload(n: int, provider: str, seed: int = SEED) -> tuple[Demand, ...]:
    rng = random.Random(f"{seed}-{provider}-{n}")
    cpus_mix, gib_mix = (
        (LOCAL_CPUS, LOCAL_GIB_PER_CPU) if provider == "local" else (CLOUD_CPUS, CLOUD_GIB_PER_CPU)
    )
    demands = []
    for i in range(n):
        cpus = _pick(rng, cpus_mix)
        memory = int(cpus * _pick(rng, gib_mix) * 1024)
        demands.append(Demand(f"vm-{i + 1:05d}", cpus, memory, nested=rng.random() < NESTED_SHARE))
    return tuple(demands)


def _pick(rng: random.Random, mix: list[tuple[float, int]]) -> float:
    return rng.choices([v for v, _ in mix], weights=[w for _, w in mix])[0]


REPEATS = 3  # the machine is shared: report the best of a few runs, as timeit does


def timed(fn, *args):  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return result, best


ROW = "{:<8} {:<11} {:>6} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6} | {:>10} {:>10}"


ROOT = Path(__file__).resolve().parent.parent
CLI_LIMITS_S = {10_000: 1.0, 100_000: 10.0}  # beyond start-up
# the CLI as users run it, and the same with libyaml hidden (what `import yaml` without its C
# extension gives: ravel's pure-Python fallback)
CLI = "from ravel.cli.launch import main; main()"
CLI_PURE = ("import ravel.model.yamlpos as y; y.CParser = None; y.MAX_PURE_TEXT = 1 << 40; "
            "from ravel.cli.launch import main; main()")


def blueprint_yaml(n: int) -> str:
    """n VMs from the aws workload mix, each with a NIC on one network, one line per VM."""
    lines = ["name: plan-bench", "networks:", "  lab: {subnet: 10.0.0.0/8}", "vms:"]
    for d in workload(n, "aws"):
        nested = ", nested: true" if d.nested else ""
        lines.append(f"  {d.name}: {{cpus: {d.cpus}, memory: {d.memory_mib}MiB{nested}, nics: [{{network: lab}}]}}")
    return "\n".join(lines) + "\n"


def run_cli(code: str, *args: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, timeout=900)
    took = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"ravel {' '.join(args)} failed: {p.stderr.strip()[-500:]}")
    return took


def best(repeats: int, fn, *args):  # type: ignore[no-untyped-def]
    return min(fn(*args) for _ in range(repeats))


CLI_ROW = "{:>7} | {:>9} {:>9} | {:>9} {:>7} | {:>10} {:>7}"


def cli_section() -> list[str]:
    from ravel.model.resolve import load_blueprint
    from ravel.plan.plan import make_plan

    catalogue = load_catalogue("aws")
    startup = best(5, run_cli, CLI, "plan", "--help")
    print(f"\n`ravel plan FILE --provider aws`, end to end (a process each, best of a few runs); "
          f"CLI start-up ({sys.executable} -m ravel plan --help): {startup:.3f} s")
    print(CLI_ROW.format("VMs", "plan s", "beyond", "planner s", "share", "no libyaml", "ratio"))
    print("-" * 72)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1_000, 10_000, 100_000):
            path = Path(tmp) / f"bp{n}.yaml"
            text = blueprint_yaml(n)
            path.write_text(text)
            repeats = 3 if n <= 10_000 else 1
            ours = best(repeats, run_cli, CLI, "plan", str(path), "--provider", "aws")
            base = best(repeats, run_cli, CLI_PURE, "plan", str(path), "--provider", "aws")
            bp = load_blueprint(text, str(path))
            _, planner = timed(make_plan, bp, catalogue)
            beyond, base_beyond = ours - startup, base - startup
            print(CLI_ROW.format(n, f"{ours:.3f}", f"{beyond:.3f}", f"{planner:.3f}", f"{planner / beyond:.0%}",
                                 f"{base_beyond:.3f}", f"{beyond / base_beyond:.3f}"))
            limit = CLI_LIMITS_S.get(n)
            if limit is not None and beyond > limit:
                failures.append(f"ravel plan of {n:,} VMs: {beyond:.2f} s > {limit:g} s beyond start-up")
    print("beyond: plan s less start-up; share: the planner's part of it; ratio: beyond / the same "
          "without libyaml")
    return failures


def main() -> int:
    if "--cli-only" in sys.argv:
        failures = cli_section()
        print("\n" + ("targets NOT met: " + "; ".join(failures) if failures else
                      "targets met: ravel plan of 10,000 VMs <= 1 s and of 100,000 VMs <= 10 s beyond start-up"))
        return 1 if failures else 0
    cases = [("local", 100)] + [(p, n) for p in ("aws", "gcp") for n in (100, 1_000, 10_000)]
    header = ROW.format(
        "provider",
        "mode",
        "VMs",
        "ravel s",
        "cost/LB",
        "hosts",
        "ffd s",
        "cost/LB",
        "hosts",
        "ravel cost",
        "ffd cost",
    )
    print(f"wall time: best of {REPEATS} runs; cost/LB: hourly cost over the LP lower bound")
    print(header)
    print("-" * len(header))
    failures = []
    for provider, n in cases:
        catalogue = load_catalogue(provider)
        demands = workload(n, provider)
        for mode in ("cost", "performance"):
            request = Request(demands, optimize=mode)  # type: ignore[arg-type]
            ours, t_ours = timed(place, request, catalogue)
            base, t_base = timed(first_fit_decreasing, request, catalogue)
            print(
                ROW.format(
                    provider, mode, n,
                    f"{t_ours:.3f}", f"{ours.ratio:.4f}", len(ours.hosts),
                    f"{t_base:.3f}", f"{base.ratio:.4f}", len(base.hosts),
                    f"{ours.cost_per_hour:.2f}", f"{base.cost_per_hour:.2f}",
                )
            )  # fmt: skip
            case = f"{provider}/{mode}/{n}"
            if n >= 10_000 and t_ours > TIME_LIMIT_S:
                failures.append(f"{case}: {t_ours:.2f} s > {TIME_LIMIT_S} s")
            if n >= 1_000 and provider in ("aws", "gcp") and ours.ratio > RATIO_LIMIT:
                failures.append(f"{case}: cost/LB {ours.ratio:.4f} > {RATIO_LIMIT}")
            if ours.cost_per_hour > base.cost_per_hour + 1e-9:
                failures.append(f"{case}: costlier than FFD")
    failures += cli_section()
    print()
    if failures:
        print("targets NOT met: " + "; ".join(failures))
        return 1
    print(
        f"targets met: 10,000 VMs in <= {TIME_LIMIT_S:g} s, cost <= {RATIO_LIMIT} x lower bound "
        "from 1,000 VMs (aws, gcp, both modes), never costlier than FFD; ravel plan of 10,000 VMs "
        "<= 1 s and of 100,000 VMs <= 10 s beyond start-up"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
