"""Provisioning benchmark: 20 hosts versus 1 host, against the cloud fakes with the same injected
per-call latency (a real endpoint is tens to hundreds of milliseconds away; the fakes answer
in microseconds, which would hide whether calls overlap).

For each provider (AWS against moto's server, GCP against tests/fakes/gce.py through the real
google-cloud-compute client) it times the pipeline's own provisioning stage
(ravel.run.provision.make_hosts: security group/firewall, key, network, instances, waits) for
one host and for twenty (medians of five interleaved runs, each for a fresh app and state),
in this run. Nothing is reached over SSH.

Prints both times and their ratio. Target: 20 hosts <= 1.5 x 1 host (provisioning is
concurrent; sequential would be about 20 x).

    .venv/bin/python bench/provision_bench.py [--latency 0.1] [--hosts 20] [--provider aws|gcp|both]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ravel.paths import paths as make_paths
from ravel.providers.base import HostSpec
from ravel.run.provision import make_hosts
from tests.contract.servers import moto_server

TARGET = 1.5
REPEAT = 5  # each figure is the median of five runs, each for a fresh app (and state)


def specs(app: str, n: int, type_: str) -> list[HostSpec]:
    return [HostSpec(app, f"host-{i}", i, type_, token=f"{app}-{i}", ssh_from="198.51.100.7/32",
                     deadline=time.monotonic() + 600) for i in range(1, n + 1)]


def interleaved(runs: int, one, many) -> tuple[float, float]:
    """Medians of `runs` alternating measurements, so a busy moment on this machine weighs on
    both figures alike."""
    ones, manys = [], []
    for i in range(runs):
        ones.append(one(i))
        manys.append(many(i))
    return statistics.median(ones), statistics.median(manys)


def timed(provider, app: str, n: int, type_: str) -> float:
    t = time.monotonic()
    made = make_hosts(provider, specs(app, n, type_))
    took = time.monotonic() - t
    assert len(made) == n and len({h.ref for h in made.values()}) == n
    return took


def bench_aws(home: Path, latency: float, hosts: int) -> tuple[float, float]:
    log = home / "aws-calls.jsonl"
    with moto_server(delay=latency, log=log, stderr=home / "moto.err") as server:
        os.environ.update(server, AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent",
                          AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
        import boto3

        ami = boto3.client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        os.environ["RAVEL_AWS_AMI"] = ami
        from ravel.providers.aws import AwsProvider

        # a fresh provider per run: nothing cached between the two; a first run warms imports up
        timed(AwsProvider(make_paths({"RAVEL_HOME": str(home / "aws0")})), "warm", 1, "c8i.large")
        one, many = interleaved(
            REPEAT,
            lambda i: timed(AwsProvider(make_paths({"RAVEL_HOME": str(home / f"aws1-{i}")})), f"one{i}", 1, "c8i.large"),
            lambda i: timed(AwsProvider(make_paths({"RAVEL_HOME": str(home / f"aws20-{i}")})), f"many{i}", hosts,
                            "c8i.large"))
        calls = [json.loads(line)["action"] for line in log.read_text().splitlines()]
        sys.stderr.write((home / "moto.err").read_text()[-3000:]) if "Traceback" in (home / "moto.err").read_text() else None
        print(f"  aws: {calls.count('RunInstances')} RunInstances, {len(calls)} calls in all", file=sys.stderr)
        return one, many


def bench_gcp(home: Path, latency: float, hosts: int) -> tuple[float, float]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = "bench@ravel-bench.iam.gserviceaccount.com"
    public = home / "sa.pub.pem"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    # the fake in a process of its own, like moto's server: its work must not share our interpreter
    server = subprocess.Popen([sys.executable, str(ROOT / "tests/fakes/gce.py"), "--delay", str(latency),
                               "--trust", f"{email}={public}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, cwd=ROOT)
    try:
        ready, _, _ = select.select([server.stdout], [], [], 30)
        if not ready:
            sys.exit("the GCE fake did not start")
        url = f"http://127.0.0.1:{int(server.stdout.readline().split()[1])}"
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        sa = home / "sa.json"
        # its own universe: in Google's, google-auth would look the account up at googleapis.com
        sa.write_text(json.dumps({"type": "service_account", "project_id": "ravel-bench", "private_key_id": "k",
                                  "private_key": pem, "client_email": email, "client_id": "1",
                                  "token_uri": url + "/token", "universe_domain": "fake.ravel.test"}))
        os.environ.update(GOOGLE_APPLICATION_CREDENTIALS=str(sa), GOOGLE_CLOUD_UNIVERSE_DOMAIN="fake.ravel.test",
                          NO_GCE_CHECK="True", CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE=url + "/compute/v1/")
        from ravel.providers.gcp import GcpProvider

        def provider(name: str) -> GcpProvider:
            # polling no faster than the fake answers: each operation costs the same either way
            return GcpProvider(make_paths({"RAVEL_HOME": str(home / name)}), poll_interval=max(latency, 0.05))

        timed(provider("gcp0"), "warm", 1, "n2-standard-2")  # imports, first JWT: not provisioning
        one, many = interleaved(REPEAT, lambda i: timed(provider(f"gcp1-{i}"), f"one{i}", 1, "n2-standard-2"),
                                lambda i: timed(provider(f"gcp20-{i}"), f"many{i}", hosts, "n2-standard-2"))
        return one, many
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.1, help="seconds added to every API call")
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--provider", choices=("aws", "gcp", "both"), default="both")
    args = parser.parse_args()
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="ravel-provision-bench-") as tmp:
        home = Path(tmp)
        runs = {"aws": bench_aws, "gcp": bench_gcp}
        for name in (("aws", "gcp") if args.provider == "both" else (args.provider,)):
            one, many = runs[name](home, args.latency, args.hosts)
            ratio = many / one
            worst = max(worst, ratio)
            print(f"{name}: 1 host {one:.2f} s, {args.hosts} hosts {many:.2f} s, ratio {ratio:.2f} x "
                  f"(target <= {TARGET} x; sequential would be ~{args.hosts} x) at {args.latency * 1000:.0f} ms/call")
    print(f"provisioning {args.hosts} hosts vs 1: worst ratio {worst:.2f} x, target <= {TARGET} x: "
          f"{'met' if worst <= TARGET else 'NOT met'}")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
