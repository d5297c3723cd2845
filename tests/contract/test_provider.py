"""One contract for every Provider: local namespaces, AWS (against moto's server) and GCP (the
real google-cloud-compute client against tests/fakes/gce.py). Hosts are made, found again,
listed, deleted (twice) and cleaned up; afterwards nothing of the test's may remain."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.contract.servers import moto_server

from ravel.paths import paths as make_paths
from ravel.providers.base import GarbageCollector, HostSpec, Provider
from ravel.transport.base import Transport
from ravel.transport.netns import NamespaceTransport
from ravel.transport.ssh import SSHTransport

APP = f"pc{os.getpid()}"
TYPES = {"local": "local-small", "aws": "c8i.large", "gcp": "n2-standard-2"}
# what each provider declares it can do, checked against what it does
COLLECTS_GARBAGE = {"local": False, "aws": True, "gcp": True}
# every transport kind a provider may offer, and what `transport()` must then hand out
TRANSPORT_KINDS = {"netns": NamespaceTransport, "ssh": SSHTransport}
KIND_HOSTS = (5, 6)  # hosts test_every_declared_transport_is_honoured makes, one per kind


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
    with moto_server(log=log) as server:
        env.set(**server, AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent",
                AWS_SHARED_CREDENTIALS_FILE="/nonexistent", RAVEL_SSH_FROM="198.51.100.7/32")
        import boto3

        env.set(RAVEL_AWS_AMI=boto3.client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"])
        from ravel.providers.aws import AwsProvider

        yield AwsProvider(make_paths({"RAVEL_HOME": str(home)}))


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
        for i in (1, 2, *KIND_HOSTS):  # whatever a failed test left
            p.delete_host(APP, f"host-{i}", i)
        p.cleanup()
        assert p.leftover_hosts(APP) == []
        if isinstance(p, GarbageCollector):
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


def test_capabilities_are_declared(provider):
    assert isinstance(provider, Provider)
    assert type(provider.transports) is tuple and provider.transports, "a provider says how its hosts are reached"
    assert len(set(provider.transports)) == len(provider.transports)
    assert set(provider.transports) <= set(TRANSPORT_KINDS), f"unknown kinds in {provider.transports}"
    assert isinstance(provider, GarbageCollector) is COLLECTS_GARBAGE[provider.name]


def test_every_declared_transport_is_honoured(provider):
    assert len(provider.transports) <= len(KIND_HOSTS)
    for n, kind in zip(KIND_HOSTS, provider.transports):
        host = provider.ensure_host(HostSpec(APP, f"host-{n}", n, TYPES[provider.name], token=f"{APP}-{n}",
                                             transport=kind))
        t = provider.transport(host)
        try:
            assert isinstance(t, Transport) and isinstance(t, TRANSPORT_KINDS[kind]), (kind, type(t))
            assert t.host == host.name
            if provider.name == "local":  # a cloud fake's hosts never boot: nothing answers there
                assert t.run(["echo", kind], timeout=30).stdout == f"{kind}\n"
        finally:
            t.close()
            provider.delete_host(APP, host.name, n)
    assert set(provider.leftover_hosts(APP)) <= {"host-1", "host-2"}


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
