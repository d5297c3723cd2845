"""A guest's cloud-init NoCloud seed: the three files per VM (hostname, keys, user, network-config
for static and DHCP networks), the merge with the user's user-data (checked by cloud-init's own
merger when Debian's cloud-init is importable), the check of bad user-data, and the ISO on disk."""

from __future__ import annotations

import functools
import io
import json
import os
import stat
import subprocess
import textwrap
from email import message_from_string
from pathlib import Path

import pycdlib
import pytest
import yaml

from ravel import keys
from ravel.keys import generate
from ravel.model.resolve import load_blueprint
from ravel.paths import paths as make_paths
from ravel.plan.app import resolve_app
from ravel.plan.catalogue import load_catalogue
from ravel.plan.plan import make_plan
from ravel.render.seed import MERGE_HEADER, MERGE_TYPE, part_type, seed_files
from ravel.run.seeds import check_user_data, ensure_seeds, forget_seed, instance_id

LOGIN = generate("ravel-user")
HOST = generate("ravel-t-web")
SYSTEM_PYTHON = "/usr/bin/python3"

BP = textwrap.dedent("""\
    name: t
    networks:
      lan: {subnet: 10.1.0.0/24, dhcp: true, dns: true, gateway: 10.1.0.1, mtu: 1450}
      back: {subnet: 10.2.0.0/24, gateway: 10.2.0.1, dns: true, mtu: 9000}
      side: {subnet: 10.3.0.0/24, gateway: 10.3.0.1}
      bare: {subnet: 10.4.0.0/24}
    vms:
      web:
        cloud_init:
          meta_data: {zone: a, instance-id: not-this}
        nics:
          - {network: lan}
          - {network: back, ip: 10.2.0.5}
      db:
        user: admin
        cloud_init: true
        nics:
          - {network: back, ip: 10.2.0.9}
          - {network: side, ip: 10.3.0.9}
          - {network: bare}
      plain:
        nics: [{network: lan}]
    """)

USER_DATA = textwrap.dedent("""\
    #cloud-config
    hostname: not-mine
    packages: [nginx]
    users:
      - default
      - {name: bob, shell: /bin/sh}
    runcmd:
      - [touch, /x]
    """)


def app(text: str = BP, base_dir: str | None = None):
    bp = load_blueprint(text, "t.yaml", base_dir)
    plan = make_plan(bp, load_catalogue("local"))
    return resolve_app(bp, "t", plan, {n.name: 100 + i for i, n in enumerate(bp.networks)})


def files(vm: str = "web", user_data: str | None = None, ap=None):
    return seed_files(ap or app(), vm, f"t-{vm}-0123", LOGIN.public_line, HOST, user_data)


def doc(data: bytes):
    return yaml.safe_load(data.decode())


# ---- meta-data and ravel's user-data ----

def test_meta_data_instance_id_hostname_and_extra_keys():
    md = doc(files().meta_data)
    # ravel's keys win over the blueprint's extra ones
    assert md == {"instance-id": "t-web-0123", "local-hostname": "web", "zone": "a"}
    assert doc(files("db").meta_data) == {"instance-id": "t-db-0123", "local-hostname": "db"}


def test_user_data_hostname_user_sudo_and_pinned_host_key():
    text = files().user_data.decode()
    assert text.startswith("#cloud-config\n")  # no user-data of the user's: no MIME
    cc = yaml.safe_load(text)
    assert cc["hostname"] == "web" and cc["fqdn"] == "web.t.lab"
    assert cc["manage_etc_hosts"] is True
    assert cc["users"] == [{"name": "ravel", "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL",
                            "lock_passwd": True, "ssh_authorized_keys": [LOGIN.public_line]}]
    # no ssh_pwauth: setting it makes cloud-init restart sshd late in the first boot, after SSH
    # already answered with the pinned key; the user has no password to log in with anyway
    assert "ssh_pwauth" not in cc and cc["users"][0]["lock_passwd"] is True
    assert cc["ssh_keys"] == {"ed25519_private": HOST.private_openssh.strip() + "\n",
                              "ed25519_public": HOST.public_line}
    # other key types are left to cloud-init (no ssh_genkeytypes, no ssh_deletekeys override)
    assert "ssh_genkeytypes" not in cc and "ssh_deletekeys" not in cc


def test_user_data_per_vm_user_and_hostname():
    cc = doc(files("db").user_data)
    assert cc["hostname"] == "db" and cc["fqdn"] == "db.t.lab"
    assert [u["name"] for u in cc["users"]] == ["admin"]  # the VM's `user:`


def test_ravel_user_data_passes_cloud_init_schema():
    assert check_user_data(files().user_data.decode()) == []


# ---- network-config ----

def test_network_config_dhcp_and_static():
    ap = app()
    nics = ap.nics("web")
    nc = doc(files(ap=ap).network_config)
    assert nc == {"version": 2, "ethernets": {
        # DHCP brings the DNS server; the search domain is written too (networkd ignores DHCP's)
        "nic0": {"match": {"macaddress": nics[0].mac}, "dhcp4": True, "nameservers": {"search": ["t.lab"]},
                 "mtu": 1450},
        "nic1": {"match": {"macaddress": nics[1].mac}, "dhcp4": False, "addresses": ["10.2.0.5/24"],
                 "routes": [{"to": "0.0.0.0/0", "via": "10.2.0.1"}],
                 "nameservers": {"addresses": ["10.2.0.1"], "search": ["t.lab"]},
                 "mtu": 9000, "optional": True},
    }}


def test_network_config_static_route_once_dns_only_where_served_and_bare_nic():
    ap = app()
    nc = doc(files("db", ap=ap).network_config)["ethernets"]
    assert nc["nic0"]["addresses"] == ["10.2.0.9/24"] and "optional" not in nc["nic0"]
    assert nc["nic0"]["routes"] == [{"to": "0.0.0.0/0", "via": "10.2.0.1"}]
    assert nc["nic0"]["nameservers"] == {"addresses": ["10.2.0.1"], "search": ["t.lab"]}
    # the second gated network: an address, no second default route, no DNS (dns: false)
    assert nc["nic1"] == {"match": {"macaddress": ap.nics("db")[1].mac}, "dhcp4": False,
                          "addresses": ["10.3.0.9/24"], "mtu": 1500, "optional": True}
    # no DHCP and no address: the link only
    assert nc["nic2"] == {"match": {"macaddress": ap.nics("db")[2].mac}, "dhcp4": False,
                          "mtu": 1500, "optional": True}
    assert all("set-name" not in e for e in nc.values())  # interfaces keep their names


def test_network_config_dns_service_address_without_gateway():
    ap = app(BP.replace("back: {subnet: 10.2.0.0/24, gateway: 10.2.0.1, dns: true, mtu: 9000}",
                        "back: {subnet: 10.2.0.0/24, dns: true}"))
    nc = doc(files(ap=ap).network_config)["ethernets"]["nic1"]
    server = str(ap.network.services["back"].address.ip)
    assert server != "10.2.0.1"
    assert nc["nameservers"] == {"addresses": [server], "search": ["t.lab"]}
    assert "routes" not in nc  # no gateway, no default route


def test_network_config_from_the_blueprint_verbatim():
    own = {"version": 2, "ethernets": {"e": {"match": {"name": "en*"}, "dhcp4": True}}}
    ap = app(BP.replace("meta_data: {zone: a, instance-id: not-this}",
                        f"network_config: {json.dumps(own)}"))
    assert doc(files(ap=ap).network_config) == own


CLOUDINIT_NET = textwrap.dedent("""\
    import json, sys, yaml
    from cloudinit.net import network_state, netplan
    cfg = yaml.safe_load(open(sys.argv[1]))
    ns = network_state.parse_net_config_data(cfg, skip_broken=False)
    out = {"ifaces": {i["name"]: i.get("subnets", []) for i in ns.iter_interfaces() if i["name"] != "lo"},
           "default_route": ns.has_default_route,
           "netplan": yaml.safe_load(netplan.Renderer({})._render_content(ns))}
    print(json.dumps(out))
    """)


@functools.lru_cache(maxsize=1)
def system_cloudinit() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    p = subprocess.run([SYSTEM_PYTHON, "-c", "import cloudinit"], capture_output=True, check=False)
    return p.returncode == 0


@pytest.mark.skipif(not system_cloudinit(), reason="Debian's cloud-init is not importable")
def test_cloud_init_parses_network_config(tmp_path):
    # cloud-init's own parser (Debian 12: 22.4) reads the routes (it rejects `to: default`) and
    # its netplan renderer passes the v2 document through
    f = tmp_path / "network-config"
    f.write_bytes(files("db").network_config)
    p = subprocess.run([SYSTEM_PYTHON, "-c", CLOUDINIT_NET, str(f)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["default_route"] is True
    subnets = out["ifaces"]["nic0"]
    assert subnets[0]["address"] == "10.2.0.9" and subnets[0]["prefix"] == 24
    assert subnets[0]["routes"][0]["gateway"] == "10.2.0.1"
    assert subnets[0]["dns_search"] == ["t.lab"]
    assert out["netplan"]["network"] == doc(files("db").network_config)


# ---- determinism ----

def test_same_inputs_same_bytes():
    assert files() == files()
    assert files(user_data=USER_DATA) == files(user_data=USER_DATA)
    assert files().digest() == files().digest()
    assert files(user_data=USER_DATA).digest() != files().digest()
    assert seed_files(app(), "web", "t-web-other", LOGIN.public_line, HOST, None).digest() != files().digest()


# ---- the merge with the user's user-data ----

def parts(data: bytes):
    msg = message_from_string(data.decode())
    assert msg.is_multipart() and msg.get_content_type() == "multipart/mixed"
    assert msg["MIME-Version"] == "1.0"
    return [p for p in msg.walk() if not p.is_multipart()]


def test_user_data_merged_as_mime_ravel_first():
    ours, theirs = parts(files(user_data=USER_DATA).user_data)
    assert ours.get_content_type() == "text/cloud-config"
    assert yaml.safe_load(ours.get_payload(decode=True).decode())["hostname"] == "web"
    assert MERGE_HEADER not in ours
    assert theirs.get_content_type() == "text/cloud-config"
    assert theirs[MERGE_HEADER] == MERGE_TYPE == "list(append)+dict(no_replace,recurse_list)+str()"
    assert theirs.get_payload(decode=True).decode() == USER_DATA


@pytest.mark.parametrize("text,ctype", [
    ("#!/bin/sh\necho hi\n", "text/x-shellscript"),
    ("#cloud-boothook\n#!/bin/sh\necho hi\n", "text/cloud-boothook"),
    ("#include\nhttp://example.invalid/x\n", "text/x-include-url"),
    ("## template: jinja\n#cloud-config\nruncmd: [[echo, '{{ v1.local_hostname }}']]\n", "text/jinja2"),
])
def test_user_data_of_other_types_keeps_its_type(text, ctype):
    _, theirs = parts(files(user_data=text).user_data)
    assert theirs.get_content_type() == ctype
    assert theirs.get_payload(decode=True).decode() == text
    assert (MERGE_HEADER in theirs) == (ctype == "text/jinja2")  # cloud-config parts only


def test_user_mime_multipart_parts_follow_ravels():
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText
    mime = MIMEMultipart()
    mime.attach(MIMEText("#cloud-config\npackages: [git]\n", "cloud-config"))
    mime.attach(MIMEText("#!/bin/sh\necho é\n", "x-shellscript", "utf-8"))
    got = parts(files(user_data=mime.as_string()).user_data)
    assert [p.get_content_type() for p in got] == ["text/cloud-config", "text/cloud-config", "text/x-shellscript"]
    assert got[1][MERGE_HEADER] == MERGE_TYPE
    assert got[2].get_payload(decode=True).decode() == "#!/bin/sh\necho é\n"


def test_non_ascii_user_data_survives():
    text = "#cloud-config\nwrite_files: [{path: /etc/motd, content: \"Grüße\\n\"}]\n"
    _, theirs = parts(files(user_data=text).user_data)
    assert theirs.get_payload(decode=True).decode("utf-8") == text


CLOUDINIT_MERGE = textwrap.dedent("""\
    import json, sys, tempfile
    from cloudinit import handlers, helpers
    from cloudinit import user_data as ud
    from cloudinit.handlers.cloud_config import CloudConfigPartHandler
    raw = open(sys.argv[1], "rb").read()
    with tempfile.TemporaryDirectory() as d:
        paths = helpers.Paths({"cloud_dir": d})
        msg = ud.UserDataProcessor(paths).process(raw)
        h = CloudConfigPartHandler(paths)
        h.handle_part(None, handlers.CONTENT_START, None, None, None, None)
        types = []
        def part(data, filename, payload, headers):
            types.append(headers["Content-Type"])
            if headers["Content-Type"] == "text/cloud-config":
                h.handle_part(None, headers["Content-Type"], filename, payload, None, headers)
        handlers.walk(msg, part, {})
        print(json.dumps({"types": types, "config": h.cloud_buf}))
    """)


@pytest.mark.skipif(not system_cloudinit(), reason="Debian's cloud-init is not importable")
def test_cloud_inits_own_merger_appends_the_users_lists(tmp_path):
    # Debian's cloud-init parses the MIME and merges the parts as it does at boot
    user = USER_DATA + "ssh_keys: {ed25519_public: not-mine, rsa_private: mine}\n"
    f = tmp_path / "user-data"
    f.write_bytes(files(user_data=user).user_data)
    p = subprocess.run([SYSTEM_PYTHON, "-c", CLOUDINIT_MERGE, str(f)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path, check=False)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["types"] == ["text/cloud-config", "text/cloud-config"]
    cc = out["config"]
    assert [u if isinstance(u, str) else u["name"] for u in cc["users"]] == ["ravel", "default", "bob"]
    assert cc["users"][0]["ssh_authorized_keys"] == [LOGIN.public_line]
    assert cc["runcmd"] == [["touch", "/x"]] and cc["packages"] == ["nginx"]
    assert cc["hostname"] == "web"  # ravel's scalars stay
    assert cc["ssh_keys"]["ed25519_public"] == HOST.public_line  # the pinned key stays
    assert cc["ssh_keys"]["rsa_private"] == "mine"  # the user's own additions are kept


# ---- checking the user's user-data ----

def test_part_types_as_cloud_init_reads_them():
    assert part_type("  #Cloud-Config\n") == "text/cloud-config"
    assert part_type("#cloud-config-archive\n") == "text/cloud-config-archive"
    assert part_type("#include-once\n") == "text/x-include-once-url"
    assert part_type("Content-Type: multipart/mixed\n") == "multipart/mixed"
    assert part_type("packages: [x]\n") is None


def test_bad_user_data_rejected_with_a_message():
    (msg,) = check_user_data("#cloud-config\npackages: [a\n  b: c\n")
    assert msg.startswith("line 3, column 4: ")
    (msg,) = check_user_data("packages: [nginx]\n")
    assert "must start with a cloud-init header" in msg and "'packages: [nginx]'" in msg
    (msg,) = check_user_data("#cloud-config\n- a\n")
    assert "mapping" in msg
    (msg,) = check_user_data("#cloud-config-archive\n{a: 1}\n")
    assert "list" in msg
    (msg,) = check_user_data("## template: jinja\npackages: []\n")
    assert "jinja" in msg


def test_good_user_data_accepted():
    assert check_user_data(USER_DATA) == []
    assert check_user_data("#!/bin/bash\necho hi\n") == []
    assert check_user_data("#cloud-boothook\necho hi\n") == []
    assert check_user_data("## template: jinja\n#cloud-config\nruncmd: [[echo, '{{ x }}']]\n") == []


def test_cloud_init_schema_errors_reported():
    problems = check_user_data("#cloud-config\npackages: nginx\nruncmd: 5\nssh_pwauth: maybe\n")
    assert len(problems) == 1 and problems[0].startswith("cloud-init schema: ")
    assert "packages" in problems[0] and "runcmd" in problems[0]
    assert "ssh_pwauth" not in problems[0]  # a deprecation, not an error


def test_yaml_only_without_cloud_init(monkeypatch):
    from ravel.run import seeds
    seeds._check.cache_clear()
    monkeypatch.setattr(seeds, "cloud_init_exe", lambda: None)
    try:
        assert check_user_data("#cloud-config\npackages: nginx-but-not-a-list\n") == []
        assert check_user_data("#cloud-config\na: [\n")[0].startswith("line ")
    finally:
        seeds._check.cache_clear()


def test_mime_user_data_checked_part_by_part():
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText
    mime = MIMEMultipart()
    mime.attach(MIMEText("#!/bin/sh\necho\n", "x-shellscript"))
    mime.attach(MIMEText("#cloud-config\nruncmd: [\n", "cloud-config"))
    (msg,) = check_user_data(mime.as_string())
    assert msg.startswith("MIME part 2 (text/cloud-config): line ")


# ---- the seed on disk ----

def read_iso(path: str) -> tuple[str, dict[str, bytes]]:
    iso = pycdlib.PyCdlib()
    iso.open(path)
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        out = {}
        for name in ("meta-data", "user-data", "network-config"):
            for kw in ({"rr_path": f"/{name}"}, {"joliet_path": f"/{name}"}):
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, **kw)
                assert out.setdefault(name, buf.getvalue()) == buf.getvalue()
        return label, out
    finally:
        iso.close()


def test_ensure_seeds_writes_valid_isos_once(tmp_path):
    paths = make_paths({"RAVEL_HOME": str(tmp_path)})
    ap = app()
    seeds = ensure_seeds(paths, ap)
    assert sorted(seeds) == ["db", "web"]  # only cloud_init VMs
    web = seeds["web"]
    assert web.user == "ravel" and seeds["db"].user == "admin"
    pair = keys.guest_key(keys.directory(paths.state), "t", "web")
    assert web.host_key_public == pair.public_line
    assert web.instance_id == instance_id("t", "web", pair.public_line)
    assert web.instance_id.startswith("t-web-") and len(web.instance_id) == len("t-web-") + 12
    key_file = keys.directory(paths.state) / "guestkeys" / "t" / "web_ed25519"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    path = Path(web.path)
    assert path.parent == paths.app_data("t") / "seeds"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    label, got = read_iso(web.path)
    assert label == "cidata"
    _, login = keys.user_key(keys.directory(paths.state))
    want = seed_files(ap, "web", web.instance_id, login, pair, None)
    assert got == want.files()
    assert path.name == f"web-{want.digest()[:16]}.iso"

    # a second publish: the same paths, nothing written, no temp files left
    mtimes = {vm: os.stat(s.path).st_mtime_ns for vm, s in seeds.items()}
    again = ensure_seeds(paths, app())
    assert again == seeds
    assert {vm: os.stat(s.path).st_mtime_ns for vm, s in again.items()} == mtimes
    left = sorted(p.name for p in path.parent.iterdir())
    assert left == sorted(Path(s.path).name for s in seeds.values())


def test_changed_user_data_new_seed_old_removed(tmp_path):
    paths = make_paths({"RAVEL_HOME": str(tmp_path)})
    blueprint = tmp_path / "bp"
    blueprint.mkdir()
    (blueprint / "user.yaml").write_text(USER_DATA)
    text = BP.replace("cloud_init: true", "cloud_init: {user_data: user.yaml}") + \
        "  db-1:\n    cloud_init: true\n    nics: [{network: lan}]\n"
    first = ensure_seeds(paths, app(text, str(blueprint)))
    _, got = read_iso(first["db"].path)
    assert [p.get_content_type() for p in parts(got["user-data"])] == ["text/cloud-config"] * 2

    (blueprint / "user.yaml").write_text(USER_DATA + "packages_upgrade: true\n")
    second = ensure_seeds(paths, app(text, str(blueprint)))
    assert second["db"].path != first["db"].path
    assert not os.path.exists(first["db"].path)
    assert second["db"].instance_id == first["db"].instance_id  # the same guest
    # another VM whose name starts with "db-" keeps its seed, so does the unchanged one
    assert second["db-1"] == first["db-1"] and os.path.exists(first["db-1"].path)
    assert second["web"] == first["web"]


def test_recreated_vm_gets_a_new_instance_id(tmp_path):
    paths = make_paths({"RAVEL_HOME": str(tmp_path)})
    first = ensure_seeds(paths, app())
    forget_seed(paths, "t", "web")
    assert not os.path.exists(first["web"].path)
    assert os.path.exists(first["db"].path)
    second = ensure_seeds(paths, app())
    assert second["web"].instance_id != first["web"].instance_id
    assert second["web"].host_key_public != first["web"].host_key_public
    assert second["db"] == first["db"]


def test_guest_key_made_once_and_forgotten(tmp_path):
    d = tmp_path / "keys"
    a = keys.guest_key(d, "t", "web")
    assert keys.guest_key(d, "t", "web") == a
    assert a.public_line.endswith(" ravel-t-web")
    keys.forget_guest_key(d, "t", "web")
    assert not (d / "guestkeys" / "t").exists()
    assert keys.guest_key(d, "t", "web") != a


def test_unreadable_user_data_file_is_an_error(tmp_path):
    from ravel.errors import RavelError
    paths = make_paths({"RAVEL_HOME": str(tmp_path)})
    text = BP.replace("cloud_init: true", "cloud_init: {user_data: missing.yaml}")
    with pytest.raises(RavelError, match=r"VM db: cannot read user-data .*missing.yaml"):
        ensure_seeds(paths, app(text, str(tmp_path)))
