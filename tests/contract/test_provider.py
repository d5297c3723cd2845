"""One contract for every Provider: local namespaces, AWS (against moto's server) and GCP (the
real google-cloud-compute client against tests/fakes/gce.py). Hosts are made, found again,
listed, deleted (twice) and cleaned up; afterwards nothing of the test's may remain."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ravel.paths import paths as make_paths
from ravel.providers.base import HostSpec

ROOT = Path(__file__).resolve().parents[2]
APP = f"pc{os.getpid()}"
TYPES = {"local": "local-small", "aws": "c8i.large", "gcp": "n2-standard-2"}


class _Env:
    """Set environment variables for a module-scoped fixture, restored afterwards."""

    def __init__(self) -> None:
        self.saved: dict[str, str | None] = {}

    def set(self, **values: str) -> None:
        for k, v in values.items():
            self.saved.setdefault(k, os.environ.get(k))
            os.environ[k] = v

    def restore(self) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _local(home: Path, env: _Env):
    if os.geteuid() != 0:
        pytest.fail("the local provider's contract needs root (network namespaces); run `make test` as root")
    from ravel.providers.local import LocalProvider

    yield LocalProvider(make_paths({"RAVEL_HOME": str(home)}))


def _aws(home: Path, env: _Env, log: str | None = None):
    extra = ["--log", log] if log else []
    server = subprocess.Popen([sys.executable, str(ROOT / "tests/fakes/moto_server.py"), *extra], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        ready, _, _ = select.select([server.stdout], [], [], 30)
        assert ready, "moto's server did not start"
        port = int(server.stdout.readline().split()[1])
        env.set(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                RAVEL_SSH_FROM="198.51.100.7/32")
        import boto3

        env.set(RAVEL_AWS_AMI=boto3.client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"])
        from ravel.providers.aws import AwsProvider

        yield AwsProvider(make_paths({"RAVEL_HOME": str(home)}))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def _gcp(home: Path, env: _Env, keep_fake: bool = False):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.fakes.gce import GceFake

    fake = GceFake().start()
    try:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        email = "contract@ravel-test.iam.gserviceaccount.com"
        fake.trust(email, key.public_key())
        sa = home / "sa.json"
        home.mkdir(parents=True, exist_ok=True)
        sa.write_text(json.dumps({
            "type": "service_account", "project_id": "ravel-test", "private_key_id": "k", "client_email": email,
            "client_id": "1", "token_uri": fake.url + "/token", "universe_domain": "fake.ravel.test",
            "private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode()}))
        # a universe of its own: in Google's, google-auth would look the account up at googleapis.com
        env.set(GOOGLE_APPLICATION_CREDENTIALS=str(sa), GOOGLE_CLOUD_UNIVERSE_DOMAIN="fake.ravel.test",
                NO_GCE_CHECK="True", CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE=fake.url + "/compute/v1/",
                RAVEL_SSH_FROM="198.51.100.7/32")
        from ravel.providers.gcp import GcpProvider

        gcp = GcpProvider(make_paths({"RAVEL_HOME": str(home)}), poll_interval=0.01)
        yield (gcp, fake) if keep_fake else gcp
    finally:
        fake.stop()


@pytest.fixture(scope="module", params=["local", "aws", "gcp"])
def provider(request, tmp_path_factory):
    env = _Env()
    make = {"local": _local, "aws": _aws, "gcp": _gcp}[request.param]
    gen = make(tmp_path_factory.mktemp(request.param), env)
    try:
        p = next(gen)
        p.preflight()
        yield p
        for i in (1, 2):  # whatever a failed test left
            p.delete_host(APP, f"host-{i}", i)
        p.cleanup()
        assert p.leftover_hosts(APP) == []
        if hasattr(p, "garbage"):
            assert p.garbage(set()) == []  # nothing of this state remains on the cloud
        if request.param == "local":
            from ravel.providers.local import namespaces

            assert not [ns for ns in namespaces() if ns.startswith(f"rv-{APP}-") or ns == p.underlay]
    finally:
        gen.close()
        env.restore()


def spec(provider, n: int) -> HostSpec:
    return HostSpec(APP, f"host-{n}", n, TYPES[provider.name], token=f"{APP}-{n}")


def test_ensure_host_makes_a_host_once(provider):
    first = provider.ensure_host(spec(provider, 1))
    again = provider.ensure_host(spec(provider, 1))
    assert (again.app, again.name, again.ref, again.address) == (first.app, first.name, first.ref, first.address)
    assert first.ref and first.address and first.run_root
    assert provider.leftover_hosts(APP) == ["host-1"]


def test_hosts_are_distinct(provider):
    one = provider.ensure_host(spec(provider, 1))
    two = provider.ensure_host(spec(provider, 2))
    assert one.ref != two.ref and one.address != two.address
    assert provider.leftover_hosts(APP) == ["host-1", "host-2"]
    assert provider.transport(two) is not None


def test_delete_host_is_final_and_idempotent(provider):
    for n in (1, 2):  # made here too (ensure_host is idempotent): pytest-xdist may run this alone
        provider.ensure_host(spec(provider, n))
    provider.delete_host(APP, "host-2", 2)
    provider.delete_host(APP, "host-2", 2)
    provider.delete_host(APP, "host-9", 9)  # never existed
    assert provider.leftover_hosts(APP) == ["host-1"]


def test_cleanup_after_the_last_host(provider):
    provider.delete_host(APP, "host-1", 1)
    provider.cleanup()
    provider.cleanup()
    assert provider.leftover_hosts(APP) == []
