"""The GCP provider through the REAL google-cloud-compute client (and google-auth's application
default credentials), against a local fake of the Compute API at the HTTP boundary
(tests/fakes/gce.py): the assertions are on the requests the client library actually sent."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ravel.errors import ProviderError
from ravel.paths import paths as make_paths
from ravel.providers.base import HostSpec
from ravel.providers.cloud import boot_data
from ravel.providers.gcp import DEBIAN_12, MTU, GcpProvider
from ravel.render.cloud_init import startup_script
from tests.fakes.gce import Fault, GceFake

ROOT = Path(__file__).resolve().parents[2]
EMAIL = "ravel-test@ravel-test.iam.gserviceaccount.com"
SSH_FROM = "198.51.100.7/32"
ZONE = "us-central1-a"
# A universe of its own for the test's credentials: in Google's default universe google-auth
# looks up the service account's "allowed locations" at iamcredentials.googleapis.com, which
# would be traffic leaving this machine. GOOGLE_CLOUD_UNIVERSE_DOMAIN tells the client the same.
UNIVERSE = "fake.ravel.test"


@pytest.fixture(autouse=True)
def only_loopback(monkeypatch):
    """Any lookup of a name other than the fake's would be traffic leaving this machine (the
    client library's defaults point at compute.googleapis.com): fail it loudly instead."""
    real = socket.getaddrinfo
    strays: list[str] = []

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", b"127.0.0.1"):
            strays.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: no lookups of {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield strays
    assert strays == [], f"requests tried to leave the machine: {strays}"


def service_account(tmp_path: Path, fake: GceFake, trusted: bool = True) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if trusted:
        fake.trust(EMAIL, key.public_key())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = tmp_path / ("sa.json" if trusted else "sa-untrusted.json")
    path.write_text(json.dumps({"type": "service_account", "project_id": "ravel-test", "private_key_id": "k1",
                                "private_key": pem, "client_email": EMAIL, "client_id": "1",
                                "token_uri": fake.url + "/token", "universe_domain": UNIVERSE}))
    return path


@pytest.fixture
def fake():
    f = GceFake().start()
    yield f
    f.stop()


@pytest.fixture
def env(tmp_path, fake, monkeypatch):
    """Application default credentials and the endpoint, the way a user sets them."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account(tmp_path, fake)))
    monkeypatch.setenv("CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE", fake.url + "/compute/v1/")
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setenv("GOOGLE_CLOUD_UNIVERSE_DOMAIN", UNIVERSE)
    monkeypatch.setenv("RAVEL_SSH_FROM", SSH_FROM)
    for var in ("RAVEL_GCP_IMAGE", "RAVEL_GCP_PROJECT", "GOOGLE_CLOUD_PROJECT", "RAVEL_GCP_ZONE", "RAVEL_GCP_NETWORK"):
        monkeypatch.delenv(var, raising=False)
    return make_paths({"RAVEL_HOME": str(tmp_path / "home")})


def provider(paths) -> GcpProvider:
    return GcpProvider(paths, poll_interval=0.01)


def spec(host: str, type_: str = "n2-standard-2", app: str = "lab", **kw) -> HostSpec:
    return HostSpec(app, host, int(host.split("-")[1]), type_, token=f"token-{app}-{host}", **kw)


def bodies(fake: GceFake, method: str, pattern: str) -> list[dict]:
    return [r.body for r in fake.calls(method, pattern)]


def test_publish_sends_what_a_lab_needs(fake, env):
    gcp = provider(env)
    gcp.preflight()
    hosts = {s.name: gcp.ensure_host(s) for s in (spec("host-1"), spec("host-2", "e2-standard-2"))}
    tag = env.tag
    net_tag = f"ravel-{tag}-lab"

    [network] = bodies(fake, "POST", r"/global/networks$")
    assert network == {"name": f"ravel-{tag}-net", "autoCreateSubnetworks": True, "mtu": MTU,
                       "description": network["description"]}
    rules = {b["name"]: b for b in bodies(fake, "POST", r"/global/firewalls$")}
    vxlan, ssh = rules[f"{net_tag}-vxlan"], rules[f"{net_tag}-ssh"]
    assert vxlan["allowed"] == [{"IPProtocol": "udp", "ports": ["4789"]}]
    assert vxlan["sourceTags"] == [net_tag] and vxlan["targetTags"] == [net_tag] and "sourceRanges" not in vxlan
    assert ssh["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
    assert ssh["sourceRanges"] == [SSH_FROM] and ssh["targetTags"] == [net_tag] and "sourceTags" not in ssh
    assert vxlan["direction"] == ssh["direction"] == "INGRESS"

    inserts = {b["labels"]["ravel-host"]: b for b in bodies(fake, "POST", r"/zones/[^/]+/instances$")}
    assert sorted(inserts) == ["host-1", "host-2"]
    for host, body in inserts.items():
        labels = {"ravel-app": "lab", "ravel-host": host, "ravel-state": tag}
        assert body["labels"] == labels
        assert body["tags"] == {"items": [net_tag]}
        [disk] = body["disks"]
        assert disk["boot"] and disk["autoDelete"]
        assert disk["initializeParams"]["sourceImage"] == DEBIAN_12
        assert disk["initializeParams"]["labels"] == labels
        meta = {i["key"]: i["value"] for i in body["metadata"]["items"]}
        # Debian's GCE images run startup-scripts, not user-data: the bootstrap goes there
        assert meta["startup-script"] == startup_script(boot_data(env, "lab", host, MTU))
        assert "user-data" not in meta and meta["enable-oslogin"] == "FALSE"
        [nic] = body["networkInterfaces"]
        assert nic["network"].endswith(f"/global/networks/ravel-{tag}-net")
        assert nic["accessConfigs"][0]["type"] == "ONE_TO_ONE_NAT"
    assert inserts["host-1"]["machineType"] == f"zones/{ZONE}/machineTypes/n2-standard-2"
    assert inserts["host-1"]["advancedMachineFeatures"] == {"enableNestedVirtualization": True}
    assert "advancedMachineFeatures" not in inserts["host-2"]  # not a type that allows it

    # idempotency keys: every mutating call has a UUID request_id; an instance's comes from the
    # token the pipeline recorded, so a resumed publish asks with the same one
    for r in fake.calls("POST"):
        if r.path != "/token":
            uuid.UUID(r.query["requestId"])
    rids = {r.body["labels"]["ravel-host"]: r.query["requestId"] for r in fake.calls("POST", r"/instances$")}
    assert rids["host-1"] == str(uuid.uuid5(uuid.NAMESPACE_URL, "ravel:token-lab-host-1:insert"))

    # operations are awaited: each one is polled until DONE before ravel moves on
    for r in fake.calls("POST", r"/(instances|firewalls|networks)$"):
        op = next(o for o in fake.operations.values() if o["targetLink"].endswith("/" + r.body["name"]))
        assert fake.calls("GET", rf"/operations/{op['name']}$"), f"{op['name']} never polled"
        assert op["status"] == "DONE"

    # the real client library sent all of it, authenticated by the application default credentials
    api = [r for r in fake.requests if r.path != "/token"]
    assert all("gapic/" in r.headers.get("x-goog-api-client", "") for r in api)
    assert all(r.headers.get("authorization", "").startswith("Bearer ") for r in api)

    h1 = hosts["host-1"]
    assert h1.ref == f"ravel-{tag}-lab-host-1" and h1.address.startswith("10.128.")
    assert h1.extra["ssh"]["address"] == h1.extra["public_ip"] and h1.extra["public_ip"].startswith("192.0.2.")
    assert h1.extra["hypervisor"] == "kvm" and h1.extra["nested_virt"] is True
    assert h1.extra["ssh"]["host_key"] == boot_data(env, "lab", "host-1", MTU).host_key_public

    # again, from scratch (a new run): everything is found, nothing is asked for
    before = len(fake.calls("POST")) + len(fake.calls("PATCH")) + len(fake.calls("DELETE"))
    again = provider(env)
    assert again.ensure_host(spec("host-1")).ref == h1.ref
    assert len(fake.calls("POST")) + len(fake.calls("PATCH")) + len(fake.calls("DELETE")) == before


def test_a_lost_answer_is_asked_again_with_the_same_request_id(fake, env):
    # the API makes the instance, then the answer is lost (503): the client asks again with the
    # same request_id, and the API recognises it instead of making a second instance
    fake.faults.append(Fault("POST", r"/instances$", 503, after_apply=True))
    fake.faults.append(Fault("POST", r"/global/firewalls$", 503, after_apply=False))
    provider(env).ensure_host(spec("host-1"))
    posts = fake.calls("POST", r"/instances$")
    assert len(posts) == 2 and posts[0].query["requestId"] == posts[1].query["requestId"]
    assert len(fake.instances) == 1
    fw = [r for r in fake.calls("POST", r"/global/firewalls$") if r.body["name"].endswith("-vxlan")]
    assert len(fw) == 2 and fw[0].query["requestId"] == fw[1].query["requestId"]
    assert len(fake.firewalls) == 2


def test_host_image_override_and_a_new_ssh_source(fake, env, monkeypatch):
    gcp = provider(env)
    gcp.ensure_host(spec("host-1", image="projects/me/global/images/baked-1"))
    monkeypatch.setenv("RAVEL_GCP_IMAGE", "projects/me/global/images/family/baked")
    gcp.ensure_host(spec("host-2"))
    images = {b["labels"]["ravel-host"]: b["disks"][0]["initializeParams"]["sourceImage"]
              for b in bodies(fake, "POST", r"/instances$")}
    assert images == {"host-1": "projects/me/global/images/baked-1", "host-2": "projects/me/global/images/family/baked"}

    provider(env).ensure_host(spec("host-1", ssh_from="203.0.113.9"))  # the user moved
    [patch] = fake.calls("PATCH", r"/firewalls/")
    assert patch.path.endswith(f"ravel-{env.tag}-lab-ssh") and patch.body["sourceRanges"] == ["203.0.113.9/32"]
    uuid.UUID(patch.query["requestId"])


def test_delete_removes_instances_then_rules_then_network(fake, env):
    gcp = provider(env)
    for s in (spec("host-1"), spec("host-2")):
        gcp.ensure_host(s)
    assert gcp.leftover_hosts("lab") == ["host-1", "host-2"]
    gcp.delete_host("lab", "host-1", 1)
    assert len(fake.firewalls) == 2  # host-2 still needs them
    gcp.delete_host("lab", "host-2", 2)
    gcp.delete_host("lab", "host-2", 2)  # idempotent
    assert fake.instances == {} and fake.firewalls == {}
    gcp.cleanup()
    assert fake.networks == {}
    assert gcp.leftover_hosts("lab") == []
    deletes = [r.path.rsplit("/", 2)[-2] for r in fake.calls("DELETE")]
    assert deletes.index("firewalls") > deletes.index("instances") and deletes[-1] == "networks"


def test_gc_lists_and_removes_what_the_state_does_not_know(fake, env):
    gcp = provider(env)
    gcp.ensure_host(spec("host-1", app="known"))
    gcp.ensure_host(spec("host-1", app="ghost"))
    assert gcp.garbage({"known", "ghost"}) == []
    found = gcp.garbage({"known"})
    assert sorted(found) == sorted([f"instance ravel-{env.tag}-ghost-host-1 (app ghost, host-1, RUNNING)",
                                    f"firewall rule ravel-{env.tag}-ghost-ssh",
                                    f"firewall rule ravel-{env.tag}-ghost-vxlan"])
    assert sorted(gcp.collect({"known"})) == sorted(found)
    assert [n for (_, n) in fake.instances] == [f"ravel-{env.tag}-known-host-1"]
    assert sorted(fake.firewalls) == [f"ravel-{env.tag}-known-ssh", f"ravel-{env.tag}-known-vxlan"]
    assert gcp.garbage({"known"}) == []


def test_missing_credentials_is_one_line_and_sends_nothing(fake, env, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(env.state / "no-such-key.json"))
    with pytest.raises(ProviderError) as exc:
        provider(env).preflight()
    assert exc.value.message.startswith("no GCP credentials found: File ")
    assert "\n" not in exc.value.message
    assert fake.requests == []


def test_rejected_credentials_is_one_line_and_makes_nothing(fake, env, tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account(tmp_path, fake, trusted=False)))
    with pytest.raises(ProviderError) as exc:
        provider(env).preflight()
    assert exc.value.message.startswith("GCP rejected the credentials while checking the credentials")
    assert "\n" not in exc.value.message
    assert fake.calls("POST") == [] and fake.networks == {} and fake.instances == {}


def test_cli_missing_gcp_credentials(tmp_path):
    # the whole CLI: one line, exit 4 (provider), nothing in the state
    (tmp_path / "k").write_bytes(b"k")
    bp = tmp_path / "lab.yaml"
    bp.write_text("name: lab\nnetworks: {n: {subnet: 10.0.0.0/24}}\n"
                  "vms: {a: {boot: {kernel: k}, nics: [{network: n}]}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_", "RAVEL_"))}
    env.update(RAVEL_HOME=str(tmp_path / "home"), GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "missing.json"),
               NO_GCE_CHECK="True", CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE="http://127.0.0.1:9/compute/v1/")
    p = subprocess.run([sys.executable, "-m", "ravel", "publish", str(bp), "-p", "gcp"], capture_output=True,
                       text=True, timeout=120, env=env, cwd=ROOT)
    assert p.returncode == 4, p.stderr
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: no GCP credentials found")
    assert not (tmp_path / "home" / "state" / "state.db").exists()


# -- exposed services (ServiceExposer) ---------------------------------------------------------------

def _forwards(udp: bool = True):
    from ravel.plan.network import ServiceForward

    out = [ServiceForward("web", "host-1", 80, "tcp", "10.0.0.5"),
           ServiceForward("db", "host-2", 80, "tcp", "10.0.0.6", allow=("203.0.113.0/24",)),
           ServiceForward("db", "host-2", 5432, "tcp", "10.0.0.6", host_port=15432)]
    if udp:
        out.append(ServiceForward("web", "host-1", 53, "udp", "10.0.0.5"))
    return out


def _mutations(fake: GceFake) -> int:
    return sum(len(fake.calls(m)) for m in ("POST", "PATCH", "DELETE")) - len(fake.calls("POST", r"^/token$"))


def test_exposed_services_get_a_firewall_rule_from_the_users_address(fake, env):
    gcp = provider(env)
    hosts = {s.name: gcp.ensure_host(s) for s in (spec("host-1"), spec("host-2"))}
    net_tag = f"ravel-{env.tag}-lab"
    exposed = gcp.expose("lab", hosts, _forwards(), [])
    public = {h: hosts[h].extra["public_ip"] for h in hosts}
    assert [e.label() for e in exposed] == [f"{public['host-1']}:80->80/tcp", f"{public['host-2']}:80->80/tcp",
                                           f"{public['host-2']}:15432->5432/tcp", f"{public['host-1']}:53->53/udp"]
    rules = {b["name"]: b for b in bodies(fake, "POST", r"/global/firewalls$") if "-svc-" in b["name"]}
    assert len(rules) == 2
    by_source = {tuple(b["sourceRanges"]): b for b in rules.values()}
    mine, theirs = by_source[(SSH_FROM,)], by_source[("203.0.113.0/24",)]
    # the ports the hosts forward, from the user's address only; by the app's tag, nothing wider
    assert mine["allowed"] == [{"IPProtocol": "tcp", "ports": ["80", "15432"]}, {"IPProtocol": "udp", "ports": ["53"]}]
    assert theirs["allowed"] == [{"IPProtocol": "tcp", "ports": ["80"]}]
    for b in (mine, theirs):
        assert b["targetTags"] == [net_tag] and b["direction"] == "INGRESS" and "sourceTags" not in b
        assert b["description"] == f"ravel app=lab state={env.tag}"
        assert b["network"].endswith(f"/global/networks/ravel-{env.tag}-net")

    # publishing again (a new run): one list, nothing changed
    before = _mutations(fake)
    again = provider(env)
    hosts = {s.name: again.ensure_host(s) for s in (spec("host-1"), spec("host-2"))}
    assert again.expose("lab", hosts, _forwards(), exposed) == exposed
    assert _mutations(fake) == before

    # the udp service leaves the blueprint: its port leaves the rule
    again.expose("lab", hosts, _forwards(udp=False), exposed)
    [patch] = fake.calls("PATCH", r"/firewalls/.*-svc-")
    assert patch.body["allowed"] == [{"IPProtocol": "tcp", "ports": ["80", "15432"]}]
    # every service leaves: the rules go
    again.expose("lab", hosts, [], exposed)
    assert not [n for n in fake.firewalls if "-svc-" in n]
    again.expose("lab", hosts, _forwards(), [])
    # and destroy (unexpose, then the last host) leaves no rule at all
    again.unexpose("lab", [])
    assert not [n for n in fake.firewalls if "-svc-" in n]
    again.expose("lab", hosts, _forwards(), [])
    for i in (1, 2):
        again.delete_host("lab", f"host-{i}", i)
    assert fake.firewalls == {}


def test_gc_finds_exposed_services_rules(fake, env):
    gcp = provider(env)
    hosts = {"host-1": gcp.ensure_host(spec("host-1", app="ghost"))}
    gcp.expose("ghost", hosts, [s for s in _forwards() if s.host == "host-1"], [])
    [svc] = [n for n in fake.firewalls if "-svc-" in n]
    assert f"firewall rule {svc}" in gcp.garbage(set())
    gcp.collect(set())
    assert fake.firewalls == {}


def test_without_ssh_from_the_learned_address_is_the_source(fake, env, monkeypatch):
    from ravel.providers import public_address
    from tests.unit.test_public_address import CheckIp

    server = CheckIp(b"198.51.100.23\n")
    monkeypatch.delenv("RAVEL_SSH_FROM")
    monkeypatch.setenv("RAVEL_CHECKIP_URL", server.url)
    public_address.forget()
    try:
        gcp = provider(env)
        hosts = {"host-1": gcp.ensure_host(spec("host-1"))}
        gcp.expose("lab", hosts, [f for f in _forwards() if f.host == "host-1"], [])
    finally:
        server.close()
        public_address.forget()
    rules = {b["name"]: b for b in bodies(fake, "POST", r"/global/firewalls$")}
    assert rules[f"ravel-{env.tag}-lab-ssh"]["sourceRanges"] == ["198.51.100.23/32"]
    [svc] = [b for n, b in rules.items() if "-svc-" in n]
    assert svc["sourceRanges"] == ["198.51.100.23/32"]
    assert server.hits == 1
