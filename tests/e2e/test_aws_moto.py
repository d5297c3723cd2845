"""AWS end to end through the CLI, against moto's server.

Everything runs inside a network namespace this module makes (only `lo` in it): moto listens on
127.0.0.1 there and ravel runs there, so when ravel tries SSH to the public addresses moto hands
out, the kernel answers "network unreachable" and no packet leaves. moto's instances never
boot, so every publish ends, bounded by --timeout, with "host-N did not answer SSH within ...",
after it has made and recorded the hosts: exactly what a publish against a real account does
when hosts are unreachable.
"""

from __future__ import annotations

import base64
import concurrent.futures
import functools
import json
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from tests.contract.servers import moto_server
from tests.jsonschemas import parsed

ROOT = Path(__file__).resolve().parents[2]
FAKE = ROOT / "tests" / "fakes"
APP = "cloudlab"
SSH_FROM = "198.51.100.7/32"  # TEST-NET-2: never routed anywhere
TIMEOUT = "3"  # --timeout: moto's hosts never answer, so every publish ends on it

BLUEPRINT = """\
name: cloudlab
networks:
  net: {subnet: 10.30.0.0/24}
defaults:
  cpus: 1
  memory: 256MiB
  boot: {kernel: vmlinuz, initrd: initrd.img, cmdline: console=ttyS0}
vms:
  hv:
    nested: true
    nics: [{network: net}]
  web:
    count: 2
    nics: [{network: net}]
placement:
  host_types: [c8i.large, c7i.large]
  anti_affinity:
    - [hv, web]
"""
PLAN = {"host-1": "c8i.large", "host-2": "c7i.large", "host-3": "c7i.large"}
MUTATING = re.compile(r"^(Create|Run|Import|Authorize|Revoke|Terminate|Delete|Start|Stop|Modify|Attach|Detach)")


@dataclass
class Cloud:
    ns: str
    port: int
    log: Path
    home: Path
    blueprint: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAVEL_"))}
        env.update(RAVEL_HOME=str(self.home), COLUMNS="200", AWS_ENDPOINT_URL=f"http://127.0.0.1:{self.port}",
                   AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                   AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent",
                   AWS_SHARED_CREDENTIALS_FILE="/nonexistent", RAVEL_SSH_FROM=SSH_FROM)
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}

    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, sys.executable, *args]

    def ravel(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(self.argv("-m", "ravel", *args), capture_output=True, text=True, timeout=timeout,
                           env=env or self.env(), cwd=ROOT, stdin=subprocess.DEVNULL)
        assert "Traceback" not in p.stderr, p.stderr
        return p

    def tool(self, *args: str, **env: str) -> dict:
        p = subprocess.run(self.argv(str(FAKE / "aws_tool.py"), *args), capture_output=True, text=True,
                           timeout=60, env=self.env(**env), cwd=ROOT)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def state(self, sql: str, *args: object) -> list[tuple]:
        if not (self.home / "state" / "state.db").exists():
            return []
        db = sqlite3.connect(self.home / "state" / "state.db")
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    @functools.cached_property
    def ami(self) -> str:
        return self.tool("ami")["ami"]

    @property
    def tag(self) -> str:
        import hashlib

        return hashlib.sha256(str((self.home / "state").absolute()).encode()).hexdigest()[:6]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    ns = f"rvaws-{os.getpid()}"
    work = tmp_path_factory.mktemp("aws")
    (work / "vmlinuz").write_bytes(b"kernel")
    (work / "initrd.img").write_bytes(b"initrd")
    (work / "lab.yaml").write_text(BLUEPRINT)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        log = work / "calls.jsonl"
        with moto_server(log=log, namespace=ns) as server:
            port = int(server["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
            yield Cloud(ns, port, log, work / "home", work / "lab.yaml")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def ours(inv: dict, app: str | None = None) -> dict:
    """The fake's resources made for ravel (by tag), live ones only."""
    def mine(r: dict) -> bool:
        return "ravel:app" in r["tags"] and (app is None or r["tags"]["ravel:app"] == app)
    return {
        "instances": [i for i in inv["instances"] if mine(i) and i["state"] not in ("terminated", "shutting-down")],
        "groups": [g for g in inv["groups"] if mine(g)],
        "keys": [k for k in inv["keys"] if mine(k)],
        "volumes": [v for v in inv["volumes"] if mine(v) and v["attached"]],
    }


def publish(cloud: Cloud, *extra: str, app: str = APP, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    p = cloud.ravel("publish", str(cloud.blueprint), "-p", "aws", "--name", app, "--timeout", TIMEOUT,
                    "--host-image", cloud.ami, *extra, env=env)
    took = time.monotonic() - started
    assert p.returncode == 5, f"{p.returncode}\n{p.stdout}\n{p.stderr}"
    assert re.search(r"^error: host-1 did not answer SSH within \d+ s", p.stderr, re.MULTILINE), p.stderr
    assert took < float(TIMEOUT) + 15, f"publish took {took:.1f} s with --timeout {TIMEOUT}"
    return p


def error_lines(p: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in p.stderr.splitlines() if line.startswith("error:")]


# -- credentials: one line, exit non-zero, nothing made ---------------------------------------------

def test_missing_credentials_is_one_line_and_makes_nothing(cloud):
    env = cloud.env(AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None)
    env = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    p = cloud.ravel("publish", str(cloud.blueprint), "-p", "aws", "--host-image", cloud.ami, env=env)
    assert p.returncode == 4, p.stderr
    assert error_lines(p) == ["error: no AWS credentials found (environment, AWS_PROFILE/~/.aws, or an instance role)"]
    assert ours(cloud.tool("inventory")) == {"instances": [], "groups": [], "keys": [], "volumes": []}
    assert cloud.state("SELECT name FROM apps") == []


def test_rejected_credentials_is_one_line_and_makes_nothing(cloud):
    cloud.tool("auth", "on")  # moto now checks keys against its IAM, which knows none
    try:
        p = cloud.ravel("publish", str(cloud.blueprint), "-p", "aws", "--host-image", cloud.ami)
    finally:
        cloud.tool("auth", "off")
    assert p.returncode == 4, p.stderr
    [line] = error_lines(p)
    assert line.startswith("error: AWS rejected the credentials while checking the credentials: InvalidClientTokenId")
    assert ours(cloud.tool("inventory")) == {"instances": [], "groups": [], "keys": [], "volumes": []}
    assert cloud.state("SELECT name FROM apps") == []


def test_default_image_comes_from_ssm_and_a_missing_one_is_named(cloud):
    # moto has no Debian public parameter: the error names it and how to choose an image instead
    p = cloud.ravel("publish", str(cloud.blueprint), "-p", "aws", "--name", "noimage", "--timeout", TIMEOUT)
    assert p.returncode == 4, p.stderr
    [line] = error_lines(p)
    assert "/aws/service/debian/release/12/latest/amd64" in line and "ParameterNotFound" in line
    assert "--host-image" in p.stderr
    assert ours(cloud.tool("inventory")) == {"instances": [], "groups": [], "keys": [], "volumes": []}
    assert cloud.ravel("destroy", "noimage", "-y").returncode == 0


# -- publish, re-publish, destroy ---------------------------------------------------------------

def test_publish_creates_exactly_the_expected_resources(cloud):
    mark = len(cloud.calls())
    publish(cloud)
    inv = ours(cloud.tool("inventory"), APP)
    tag = cloud.tag

    hosts = {i["tags"]["ravel:host"]: i for i in inv["instances"]}
    assert sorted(hosts) == sorted(PLAN) and len(inv["instances"]) == 3
    for name, i in hosts.items():
        assert i["type"] == PLAN[name]
        assert i["tags"] == {"ravel:app": APP, "ravel:host": name, "ravel:state": tag, "Name": f"ravel-{tag}-{APP}-{name}"}
        assert i["metadata"]["HttpTokens"] == "required"  # IMDSv2 only
        assert i["key"] == f"ravel-{tag}-{APP}"
    assert sorted(v["tags"]["ravel:host"] for v in inv["volumes"]) == sorted(PLAN)

    [group] = inv["groups"]
    assert group["name"] == f"ravel-{tag}-{APP}" and group["tags"]["ravel:state"] == tag
    assert all(i["groups"] == [group["id"]] for i in inv["instances"])
    rules = sorted((r["IpProtocol"], r["FromPort"], r["ToPort"],
                    tuple(p["GroupId"] for p in r["UserIdGroupPairs"]), tuple(c["CidrIp"] for c in r["IpRanges"]),
                    tuple(c["CidrIpv6"] for c in r["Ipv6Ranges"])) for r in group["ingress"])
    assert rules == [("tcp", 22, 22, (), (SSH_FROM,), ()), ("udp", 4789, 4789, (group["id"],), (), ())]
    [key] = inv["keys"]
    assert key["name"] == f"ravel-{tag}-{APP}" and key["tags"]["ravel:app"] == APP

    # what was sent, including what moto ignores: nested virtualization, ClientToken, user-data
    runs = [c["params"] for c in cloud.calls()[mark:] if c["action"] == "RunInstances"]
    assert len(runs) == 3
    tokens = dict(cloud.state("SELECT name, json_extract(extra, '$.provision.token') FROM hosts WHERE app=?", APP))
    for params in runs:
        user_data = base64.b64decode(unquote(params["UserData"])).decode()
        host = re.search(r"RAVEL-HOST-READY (host-\d+)", user_data).group(1)
        assert user_data.startswith("#cloud-config\n")
        public = (cloud.home / "state" / "keys" / "hostkeys" / APP / f"{host}_ed25519.pub").read_text().strip()
        assert public in user_data and "ssh_authorized_keys" in user_data
        assert params["InstanceType"] == PLAN[host]
        assert params.get("CpuOptions.NestedVirtualization") == ("enabled" if PLAN[host] == "c8i.large" else None)
        assert params["ClientToken"] == tokens[host]
        assert params["MetadataOptions.HttpTokens"] == "required"
    key_file = cloud.home / "state" / "keys" / "id_ed25519"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"

    # provisioning is a stage of its own: every host is recorded before the SSH wait ended it
    rows = cloud.state("SELECT name, ref, status FROM hosts WHERE app=? ORDER BY name", APP)
    assert rows == [(n, hosts[n]["id"], "provisioned") for n in sorted(PLAN)]
    assert "PRIVATE KEY" not in (cloud.home / "state" / "state.db").read_bytes().decode(errors="replace")


def test_republish_creates_nothing(cloud):
    before = ours(cloud.tool("inventory"), APP)
    mark = len(cloud.calls())
    publish(cloud)
    mutating = [c["action"] for c in cloud.calls()[mark:] if MUTATING.match(c["action"])]
    assert mutating == []
    assert ours(cloud.tool("inventory"), APP) == before


def test_destroy_leaves_nothing(cloud):
    p = cloud.ravel("destroy", APP, "-y")
    assert p.returncode == 0, p.stderr
    assert "3 hosts removed" in p.stdout
    assert ours(cloud.tool("inventory")) == {"instances": [], "groups": [], "keys": [], "volumes": []}
    assert cloud.state("SELECT * FROM hosts WHERE app=?", APP) == []
    assert cloud.state("SELECT name FROM apps") == []


# -- a publish killed part-way, then re-run --------------------------------------------------------

def test_interrupted_publish_converges_without_duplicates(cloud):
    mark = len(cloud.calls())
    cloud.tool("delay", "0.25")  # every call is slow enough to be caught in flight
    proc = subprocess.Popen(cloud.argv("-m", "ravel", "publish", str(cloud.blueprint), "-p", "aws", "--name", APP,
                                       "--timeout", "60", "--host-image", cloud.ami),
                            env=cloud.env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(c["action"] == "RunInstances" for c in cloud.calls()[mark:]):
            assert proc.poll() is None and time.monotonic() < deadline, "publish never reached RunInstances"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # mid-RunInstances: the cloud makes hosts nobody records
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    cloud.tool("delay", "0")
    unrecorded = cloud.state("SELECT name FROM hosts WHERE app=? AND ref IS NULL", APP)
    assert unrecorded, "the kill came too late to leave a host unrecorded"
    time.sleep(1.0)  # let moto finish the calls that were in flight
    made = ours(cloud.tool("inventory"), APP)["instances"]

    publish(cloud)
    inv = ours(cloud.tool("inventory"), APP)
    assert sorted(i["tags"]["ravel:host"] for i in inv["instances"]) == sorted(PLAN)  # one each, no duplicates
    assert {i["id"] for i in made} <= {i["id"] for i in inv["instances"]}  # what the killed run made is kept
    assert len(inv["groups"]) == 1 and len(inv["keys"]) == 1
    refs = dict(cloud.state("SELECT name, ref FROM hosts WHERE app=?", APP))
    assert refs == {i["tags"]["ravel:host"]: i["id"] for i in inv["instances"]}

    assert cloud.ravel("destroy", APP, "-y").returncode == 0
    assert ours(cloud.tool("inventory")) == {"instances": [], "groups": [], "keys": [], "volumes": []}


# -- ravel gc ---------------------------------------------------------------------------------

def test_gc_removes_what_the_state_no_longer_knows(cloud):
    # "keeper" stays known to the state, so gc never touches it; "ghost" will be forgotten
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda app: publish(cloud, app=app), ["keeper", "ghost"]))
    # the state forgets "ghost" (a lost RAVEL_HOME, a crash before it was written)...
    db = sqlite3.connect(cloud.home / "state" / "state.db")
    db.execute("DELETE FROM apps WHERE name='ghost'")
    db.execute("DELETE FROM hosts WHERE app='ghost'")
    db.commit()
    db.close()
    # ...and someone makes resources with ravel's tags by hand, for this state and for another one
    cloud.tool("orphan", "handmade", cloud.tag, cloud.ami)
    cloud.tool("orphan", "elsewhere", "0ther0", cloud.ami)

    p = cloud.ravel("gc", "-p", "aws", "--dry-run")
    assert p.returncode == 0, p.stderr
    listed = p.stdout
    assert listed.count("would remove instance") == 4  # ghost's 3 + handmade's 1
    assert "app ghost" in listed and "app handmade" in listed
    assert "keeper" not in listed and "elsewhere" not in listed
    assert f"ravel-{cloud.tag}-ghost" in listed and f"key pair ravel-{cloud.tag}-handmade" in listed
    assert ours(cloud.tool("inventory"), "ghost")["instances"]  # a dry run removes nothing

    p = cloud.ravel("gc", "-p", "aws", "-y")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("removed ") == listed.count("would remove ")
    inv = cloud.tool("inventory")
    assert ours(inv, "ghost") == ours(inv, "handmade") == {"instances": [], "groups": [], "keys": [], "volumes": []}
    assert len(ours(inv, "keeper")["instances"]) == 3 and len(ours(inv, "elsewhere")["instances"]) == 1
    assert cloud.ravel("gc", "-p", "aws").stdout.strip() == "aws: nothing to collect"

    p = cloud.ravel("gc", "-p", "aws", "--any-state", "-y")  # other set-ups' resources, on request
    assert "app elsewhere" in p.stdout and "keeper" not in p.stdout
    assert cloud.ravel("destroy", "keeper", "-y").returncode == 0
    assert ours(cloud.tool("inventory")) == {"instances": [], "groups": [], "keys": [], "volumes": []}


# -- --json and publish --dry-run on a cloud -----------------------------------------------------------

def test_json_documents_and_a_dry_run_that_asks_the_cloud_for_nothing(cloud):
    p = cloud.ravel("publish", str(cloud.blueprint), "-p", "aws", "--name", "jsonapp", "--timeout", TIMEOUT,
                    "--host-image", cloud.ami, "--json")
    assert p.returncode == 5, p.stderr
    err = parsed(p.stdout, "error")["error"]
    assert err["code"] == 5 and err["kind"] == "TransportError" and "did not answer SSH" in err["message"]
    assert err["hint"] and err["message"] in p.stderr  # the human line is still on stderr

    # its hosts exist but were never configured: the dry run reaches none, and makes nothing
    mark = len(cloud.calls())
    p = cloud.ravel("publish", str(cloud.blueprint), "-p", "aws", "--name", "jsonapp", "--dry-run", "--json")
    assert p.returncode == 10, p.stderr
    doc = parsed(p.stdout, "dry-run")
    hosts = [c for c in doc["changes"] if c["kind"] == "host"]
    assert [(c["name"], c["action"]) for c in hosts] == [(h, "create") for h in PLAN]
    assert all(c["detail"].endswith("made before but never configured") for c in hosts)
    assert {c["name"] for c in doc["changes"] if c["kind"] == "vm"} == {"hv", "web-1", "web-2"}
    assert [c["action"] for c in cloud.calls()[mark:]] == ["GetCallerIdentity"]  # the credentials check only

    p = cloud.ravel("gc", "-p", "aws", "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    assert parsed(p.stdout, "gc") == {"provider": "aws", "dry_run": True, "resources": []}  # jsonapp is known
    p = cloud.ravel("destroy", "jsonapp", "-y", "--json")
    assert p.returncode == 0, p.stderr
    assert parsed(p.stdout, "destroy") == {"app": "jsonapp", "destroyed": True, "hosts_removed": 3}
    assert ours(cloud.tool("inventory"), "jsonapp") == {"instances": [], "groups": [], "keys": [], "volumes": []}


# -- where SSH may come from when the user does not say ----------------------------------------------

CHECKIP = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(sys.argv[1].encode() + b"\n")
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print("port", s.server_address[1], flush=True)
s.serve_forever()
"""


def test_without_ssh_from_the_users_learned_address_is_the_only_ssh_source(cloud):
    """No --ssh-from, no RAVEL_SSH_FROM: ravel asks a "what is my IP" endpoint (a server in the
    test's namespace, named by RAVEL_CHECKIP_URL; never the real one) and opens TCP 22 to that
    address alone. When the endpoint cannot answer, one line says to pass --ssh-from and no
    cloud resource is made."""
    server = subprocess.Popen(cloud.argv("-c", CHECKIP, "198.51.100.23"), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([server.stdout], [], [], 30)
        assert ready, "the checkip server did not start"
        port = int(server.stdout.readline().split()[1])
        env = {k: v for k, v in cloud.env(RAVEL_CHECKIP_URL=f"http://127.0.0.1:{port}/").items()
               if k != "RAVEL_SSH_FROM"}
        publish(cloud, app="learned", env=env)
    finally:
        server.kill()
        server.wait(10)
    [group] = ours(cloud.tool("inventory"), "learned")["groups"]
    ssh = [(r["IpProtocol"], c["CidrIp"]) for r in group["ingress"] for c in r["IpRanges"] if r["FromPort"] == 22]
    assert ssh == [("tcp", "198.51.100.23/32")]
    assert cloud.ravel("destroy", "learned", "-y").returncode == 0

    # the endpoint is gone now: the user is told what to do, and nothing is made
    p = cloud.ravel("publish", str(cloud.blueprint), "-p", "aws", "--name", "unlearned", "--timeout", TIMEOUT,
                    "--host-image", cloud.ami, env=env)
    assert p.returncode == 4, p.stderr
    [line] = error_lines(p)
    assert line.startswith(f"error: cannot learn this machine's public address from http://127.0.0.1:{port}/ (")
    assert line.endswith("pass --ssh-from CIDR (or set RAVEL_SSH_FROM)")
    assert ours(cloud.tool("inventory"), "unlearned") == {"instances": [], "groups": [], "keys": [], "volumes": []}
    assert cloud.ravel("destroy", "unlearned", "-y").returncode == 0


# -- an account without a default VPC -------------------------------------------------------------

def test_without_a_default_vpc_ravel_makes_one_and_removes_it(cloud):
    region = dict(AWS_DEFAULT_REGION="eu-west-3")
    assert cloud.tool("drop-default-vpc", **region)["deleted"]
    ami = cloud.tool("ami", **region)["ami"]
    p = cloud.ravel("publish", str(cloud.blueprint), "-p", "aws", "--name", "novpc", "--timeout", TIMEOUT,
                    "--host-image", ami, env=cloud.env(**region))
    assert p.returncode == 5 and "did not answer SSH" in p.stderr, p.stderr
    inv = cloud.tool("inventory", **region)
    [vpc] = [v for v in inv["vpcs"] if v["tags"].get("ravel:state") == cloud.tag]
    assert {i["vpc"] for i in ours(inv, "novpc")["instances"]} == {vpc["id"]}
    assert [g for g in inv["gateways"] if g["tags"].get("ravel:state") == cloud.tag]

    assert cloud.ravel("destroy", "novpc", "-y", env=cloud.env(**region)).returncode == 0
    inv = cloud.tool("inventory", **region)
    assert [v for v in inv["vpcs"] if v["tags"].get("ravel:state") == cloud.tag] == []
    assert [g for g in inv["gateways"] if g["tags"].get("ravel:state") == cloud.tag] == []
    assert ours(inv) == {"instances": [], "groups": [], "keys": [], "volumes": []}


# -- lifetimes: the hosts end themselves, `ravel gc` removes what they leave ---------------------------

def test_a_lifetime_is_sent_to_every_host_and_gc_collects_what_expired_hosts_leave(cloud):
    mark = len(cloud.calls())
    before = time.time()
    publish(cloud, "--ttl", "2h", app="mortal")
    after = time.time()
    runs = [c["params"] for c in cloud.calls()[mark:] if c["action"] == "RunInstances"]
    assert len(runs) == 3
    for params in runs:
        # powering off (the host's own timer) terminates the instance: no ravel process needed
        assert params["InstanceInitiatedShutdownBehavior"] == "terminate"
        doc = yaml.safe_load(base64.b64decode(unquote(params["UserData"])).decode())
        files = {f["path"]: f["content"] for f in doc["write_files"]}
        assert before + 7200 - 1 <= int(files["/var/lib/ravel/expires"]) <= after + 7200
        assert doc["bootcmd"][0][:2] == ["systemd-run", "--unit=ravel-expiry"]
        assert doc["bootcmd"][0][-1] == "/usr/local/sbin/ravel-expiry" and doc["bootcmd"][0][-1] in files
    p = cloud.ravel("list")
    assert re.search(r"mortal .* in (1h 59m|2h) \(destroy\)", p.stdout), p.stdout

    # at the expiry the hosts power themselves off and EC2 terminates them; the state still
    # knows the app, and the group and key pair are left
    cloud.tool("self-terminate", "mortal")
    db = sqlite3.connect(cloud.home / "state" / "state.db")
    db.execute("UPDATE lifetimes SET expires=? WHERE app='mortal'", (time.time() - 120,))
    db.commit()
    db.close()
    left = ours(cloud.tool("inventory"), "mortal")
    assert left["instances"] == [] and len(left["groups"]) == 1 and len(left["keys"]) == 1
    p = cloud.ravel("list")
    assert re.search(r"mortal .* expired 2m( \d+s)? ago \(destroy\)", p.stdout), p.stdout
    assert "hint: `ravel gc --provider aws` removes what the hosts left behind" in p.stderr

    p = cloud.ravel("gc", "-p", "aws", "-y")
    assert p.returncode == 0, p.stderr
    assert "removed app mortal (expired): forgotten by this state" in p.stdout
    assert "removed security group" in p.stdout and f"removed key pair ravel-{cloud.tag}-mortal" in p.stdout
    assert ours(cloud.tool("inventory"), "mortal") == {"instances": [], "groups": [], "keys": [], "volumes": []}
    assert cloud.state("SELECT name FROM apps WHERE name='mortal'") == []
    assert cloud.state("SELECT app FROM lifetimes") == []
    assert not (cloud.home / "state" / "keys" / "hostkeys" / "mortal").exists()


def test_budget_caps_the_lifetime_from_the_plan(cloud):
    p = cloud.ravel("plan", str(cloud.blueprint), "-p", "aws", "--budget", "1", "--json")
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert plan["budget"] == {"amount": 1.0, "lifetime_s": int(3600 / plan["cost_per_hour"])}
    mark = len(cloud.calls())
    before = time.time()
    publish(cloud, "--ttl", "1d", "--budget", "1", app="budgeted")  # the budget is the smaller
    runs = [c["params"] for c in cloud.calls()[mark:] if c["action"] == "RunInstances"]
    for params in runs:
        files = {f["path"]: f["content"] for f in
                 yaml.safe_load(base64.b64decode(unquote(params["UserData"])).decode())["write_files"]}
        expires = int(files["/var/lib/ravel/expires"])
        assert before + plan["budget"]["lifetime_s"] - 1 <= expires <= time.time() + plan["budget"]["lifetime_s"]
    assert cloud.ravel("destroy", "budgeted", "-y").returncode == 0


def test_nothing_left_behind(cloud):
    inv = cloud.tool("inventory")
    assert ours(inv) == {"instances": [], "groups": [], "keys": [], "volumes": []}
    assert cloud.state("SELECT name FROM apps") == []
    assert [v for v in inv["volumes"] if "ravel:app" in v["tags"] and v["state"] != "deleted" and v["attached"]] == []
