"""Benchmark of the placement planner against plain first-fit decreasing.

Generated mixed workloads (seeded, so every run plans the same labs) of 100, 1,000 and 10,000
VMs on the aws and gcp catalogues, and 100 VMs on the local one, in both optimize modes. For
each, prints the wall time and cost / lower bound of ravel's `place` and of
`first_fit_decreasing`, then whether the targets hold:

- 10,000 VMs planned in <= 1 s;
- cost <= 1.03 x lower bound for >= 1,000 VMs on aws and gcp, both modes;
- never costlier than first-fit decreasing.

Run from the repository root: .venv/bin/python bench/plan_bench.py
"""

from __future__ import annotations

import random
import sys
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


def main() -> int:
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
    print()
    if failures:
        print("targets NOT met: " + "; ".join(failures))
        return 1
    print(
        f"targets met: 10,000 VMs in <= {TIME_LIMIT_S:g} s, cost <= {RATIO_LIMIT} x lower bound "
        "from 1,000 VMs (aws, gcp, both modes), never costlier than FFD"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
