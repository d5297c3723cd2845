"""What checking the layers already in a store costs a snapshot (issue 15: a snapshot never
builds on a damaged layer), on each store: a local directory, S3 (moto's server) and GCS (its
emulator), both on 127.0.0.1.

A chain of LAYERS random layers (CHAIN_MIB in all, like a small real guest's base image and its
frozen layers) is stored once, then, best of REPEATS (the machine is shared):

- baseline, measured in the same run: storing the chain (the upload a first snapshot does);
- before issue 15: what a second snapshot of an unchanged app did with those layers: one
  `exists` per layer and nothing else (a damaged layer went unnoticed);
- full check: every layer read back whole and hashed (size + sha256), what the local store does
  at every snapshot and an object store once a week or when a layer's stamp changed;
- stamp check: size and stamp against the record of the last full check (what an object store
  does between full checks).

Prints seconds, MiB/s, each check's ratio to the upload, and its cost per GiB. The numbers
chose the policy: reading a local layer back runs near the disk's (here: the page cache's)
speed, so the local store reads back every layer every time; on an object store a full check
is a download of the whole chain, of the same order as the upload it would add to every
snapshot of an unchanged app, so there it is weekly (and `ravel store verify`).

Run from the repository root: .venv/bin/python bench/store_verify_bench.py [CHAIN_MIB]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ravel.paths import paths  # noqa: E402
from ravel.snapshot.integrity import check_layers, record_put  # noqa: E402
from ravel.snapshot.layers import layer_key, sha256_file  # noqa: E402
from ravel.store import open_store  # noqa: E402
from tests.contract.servers import env, gcs_emulator, make_bucket, moto_server  # noqa: E402

CHAIN_MIB = int(sys.argv[1]) if len(sys.argv) > 1 else 256
LAYERS = 4
REPEATS = 3


def best(fn) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run(url: str, files: dict[str, Path], sizes: dict[str, int]) -> dict[str, float]:
    store = open_store(url, paths())

    def upload() -> None:
        for sha, f in files.items():
            store.put(layer_key(sha), f)
            record_put(store, sha)

    up = best(upload)
    old = best(lambda: [store.exists(layer_key(sha)) for sha in files])
    full = best(lambda: check_layers(store, sizes, full=True))
    checks = check_layers(store, sizes)
    assert all(c.ok for c in checks.values())
    stamp = best(lambda: check_layers(store, sizes)) if store.reread_every_s else float("nan")
    return {"upload": up, "exists": old, "full": full, "stamp": stamp}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="store-verify-bench-") as tmp:
        d = Path(tmp)
        files, sizes = {}, {}
        per = CHAIN_MIB // LAYERS << 20
        for i in range(LAYERS):
            f = d / f"layer{i}"
            with open(f, "wb") as out:
                for _ in range(per // (4 << 20)):
                    out.write(os.urandom(4 << 20))
            sha, size = sha256_file(f)
            files[sha], sizes[sha] = f, size
        total = sum(sizes.values())
        print(f"chain: {LAYERS} layers, {total / 2**20:.0f} MiB; best of {REPEATS}")
        print(f"{'store':<6} {'upload s':>9} {'exists s':>9} {'full check s':>13} {'MiB/s':>7} "
              f"{'full/upload':>12} {'s per GiB':>10} {'stamp check s':>14}")
        with moto_server() as s3, gcs_emulator(d / "gcs") as gs, env({**s3, **gs}):
            for kind, url in (("local", f"file://{d}/store"), ("s3", "s3://bench-store/p"), ("gs", "gs://bench-store2/p")):
                if kind != "local":
                    make_bucket(url)
                r = run(url, files, sizes)
                print(f"{kind:<6} {r['upload']:9.3f} {r['exists']:9.4f} {r['full']:13.3f} "
                      f"{total / 2**20 / r['full']:7.0f} {r['full'] / r['upload']:12.2f} "
                      f"{r['full'] / (total / 2**30):10.2f} {r['stamp']:14.4f}")


if __name__ == "__main__":
    main()
