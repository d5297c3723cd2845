"""A guest's cloud-init NoCloud seed: the three files of the `cidata` volume, from the app's
resolved plan. Pure: values in, bytes out, the same bytes for the same inputs.

- meta-data: the instance-id (chosen by the caller: new when the VM is re-created, stable across
  stop/start), `local-hostname` = the VM's name, and the blueprint's extra keys.
- user-data: ravel's `#cloud-config` (hostname and FQDN `<vm>.<app>.lab`, the login user with
  ravel's key and passwordless sudo, the guest's SSH host key made by ravel so it can be pinned).
  With the user's own user-data, a MIME multipart: ravel's part first, the user's after it with
  a `Merge-Type` header, so cloud-init appends the user's lists (`users`, `packages`, `runcmd`)
  to ravel's instead of replacing them (cloud-init's "merging user-data").
- network-config: version 2 from the blueprint (or the blueprint's own, verbatim): one entry
  per NIC, matched by MAC (interfaces keep their names), DHCP where the network serves it,
  else the static address; MTU; the default route and DNS server with search `<app>.lab`.

Written for cloud-init 22.4 (Debian 12) and later: the default route is `to: 0.0.0.0/0`, not
`to: default` (22.4's network-state parser rejects "default", and netplan deprecates
`gateway4`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from email import message_from_string
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import yaml

from ..keys import KeyPair
from ..model.blueprint import DEFAULT_USER
from ..plan.app import AppPlan
from .host_state import app_domain

# cloud-init's merge rules for the user's part: lists append, dictionaries merge key by key
# (ravel's values stay where both set one: the user adds, never removes ravel's access), strings
# are kept. A `merge_how` in the user's own cloud-config takes precedence over this header.
MERGE_HEADER = "Merge-Type"
MERGE_TYPE = "list(append)+dict(no_replace,recurse_list)+str()"
SUDO = "ALL=(ALL) NOPASSWD:ALL"
SHELL = "/bin/bash"

# cloud-init's part types by the first line (cloudinit.handlers.INCLUSION_TYPES_MAP), matched
# the way cloud-init does: case-insensitive, leading blanks ignored, longest prefix first.
PART_TYPES = {
    "#include": "text/x-include-url",
    "#include-once": "text/x-include-once-url",
    "#!": "text/x-shellscript",
    "#cloud-config": "text/cloud-config",
    "#part-handler": "text/part-handler",
    "#cloud-boothook": "text/cloud-boothook",
    "#cloud-config-archive": "text/cloud-config-archive",
    "#cloud-config-jsonp": "text/cloud-config-jsonp",
    "## template: jinja": "text/jinja2",
}
_PREFIXES = sorted(PART_TYPES, key=len, reverse=True)
MIME_PREFIXES = ("content-type:", "mime-version:")

# the names in the ISO: ISO 9660 level-1 names, Rock Ridge and Joliet names (what Linux shows)
ISO_NAMES = {"meta-data": "/METADATA.;1", "user-data": "/USERDATA.;1", "network-config": "/NETWORK.;1"}
VOLUME_ID = "cidata"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (keys, scripts) as literal blocks, so the files read as written."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)


@dataclass(frozen=True)
class SeedFiles:
    meta_data: bytes
    user_data: bytes
    network_config: bytes

    def files(self) -> dict[str, bytes]:
        """The seed volume's file names -> contents."""
        return {"meta-data": self.meta_data, "user-data": self.user_data,
                "network-config": self.network_config}

    def digest(self) -> str:
        """sha256 over the three files (names and lengths included): names the seed's ISO."""
        h = hashlib.sha256()
        for name, data in self.files().items():
            h.update(f"{name}\0{len(data)}\0".encode())
            h.update(data)
        return h.hexdigest()


def part_type(text: str) -> str | None:
    """cloud-init's content type of a user-data text from its first line; "multipart/mixed" for
    a MIME message; None when cloud-init would not recognise it."""
    head = text.lstrip().lower()
    if head.startswith(MIME_PREFIXES):
        return "multipart/mixed"
    for prefix in _PREFIXES:
        if head.startswith(prefix):
            return PART_TYPES[prefix]
    return None


def fqdn(app: str, vm: str) -> str:
    return f"{vm}.{app_domain(app)}"


def render_meta_data(ap: AppPlan, vm: str, instance_id: str) -> str:
    ci = ap.blueprint.vm(vm).cloud_init
    extra = json.loads(ci.meta_data) if ci is not None else {}
    doc: dict[str, Any] = {"instance-id": instance_id, "local-hostname": vm}
    doc.update({k: v for k, v in sorted(extra.items()) if k not in doc})  # ravel's keys win
    return _yaml(doc)


def ravel_config(ap: AppPlan, vm: str, login_key: str, host_key: KeyPair) -> str:
    """ravel's own `#cloud-config` part."""
    login = ap.blueprint.vm(vm).login or DEFAULT_USER
    doc = {
        "hostname": vm,
        "fqdn": fqdn(ap.app, vm),
        "manage_etc_hosts": True,
        "users": [{
            "name": login,
            "shell": SHELL,
            "sudo": SUDO,
            "lock_passwd": True,
            "ssh_authorized_keys": [login_key.strip()],
        }],
        # the guest's host key, made and kept by ravel: its SSH is pinned, never learned
        "ssh_keys": {"ed25519_private": host_key.private_openssh.strip() + "\n",
                     "ed25519_public": host_key.public_line.strip()},
    }
    return "#cloud-config\n" + _yaml(doc)


def _text_part(text: str, ctype: str, filename: str) -> MIMEText:
    sub = ctype.split("/", 1)[1]
    # 7bit when ASCII (readable); base64 otherwise, as cloud-init's make-mime does: a UTF-8
    # payload sent as 8bit is decoded to the wrong bytes by the email parser cloud-init uses
    ascii_only = text.isascii()
    part = MIMEText(text, sub, "us-ascii" if ascii_only else "utf-8")
    part.add_header("Content-Disposition", "attachment", filename=filename)
    return part


def _user_parts(text: str) -> list[Message]:
    """The user's user-data as MIME parts, each cloud-config part carrying the merge header."""
    ctype = part_type(text)
    if ctype == "multipart/mixed":
        msg = message_from_string(text.lstrip())
        parts = [p for p in msg.walk() if not p.is_multipart()]
    else:
        if ctype is None:  # check_user_data rejects this before publishing; cloud-init ignores it
            ctype = "text/plain"
        parts = [_text_part(text, ctype, "user-data")]
    for p in parts:
        if p.get_content_type() in ("text/cloud-config", "text/jinja2") and MERGE_HEADER not in p \
                and f"X-{MERGE_HEADER}" not in p:
            p[MERGE_HEADER] = MERGE_TYPE
    return parts


def render_user_data(ap: AppPlan, vm: str, login_key: str, host_key: KeyPair, extra: str | None) -> str:
    ours = ravel_config(ap, vm, login_key, host_key)
    if extra is None or not extra.strip():
        return ours
    parts: list[Message] = [_text_part(ours, "text/cloud-config", "ravel.cfg"), *_user_parts(extra)]
    body = "".join(p.as_string() for p in parts)
    # a fixed boundary, derived from the parts, so the same inputs give the same bytes
    boundary = "===ravel-" + hashlib.sha256(body.encode()).hexdigest()[:32] + "=="
    msg = MIMEMultipart("mixed", boundary=boundary)
    for p in parts:
        msg.attach(p)
    return msg.as_string() + "\n"


def render_network_config(ap: AppPlan, vm: str) -> str:
    """network-config version 2 from the plan, or the blueprint's own verbatim."""
    ci = ap.blueprint.vm(vm).cloud_init
    if ci is not None and ci.network_config is not None:
        return _yaml(json.loads(ci.network_config))
    bp = ap.blueprint
    ethernets: dict[str, dict[str, Any]] = {}
    routed = False
    for i, nic in enumerate(ap.nics(vm)):
        net = bp.network(nic.network)
        e: dict[str, Any] = {"match": {"macaddress": nic.mac}}
        if nic.dhcp:
            e["dhcp4"] = True
            if net.dns:  # the server comes by DHCP; the search domain too, but networkd ignores it
                e["nameservers"] = {"search": [app_domain(ap.app)]}
        else:
            e["dhcp4"] = False
            if nic.ip is not None:
                e["addresses"] = [str(nic.ip)]
                service = ap.network.services.get(nic.network)
                if net.gateway is not None and not routed:
                    e["routes"] = [{"to": "0.0.0.0/0", "via": str(net.gateway)}]
                    routed = True
                if net.dns and service is not None:
                    e["nameservers"] = {"addresses": [str(service.address.ip)],
                                        "search": [app_domain(ap.app)]}
        e["mtu"] = net.mtu
        if i > 0:
            e["optional"] = True  # boot waits for the first NIC only
        ethernets[f"nic{nic.index}"] = e
    return _yaml({"version": 2, "ethernets": ethernets})


def seed_files(ap: AppPlan, vm: str, instance_id: str, login_key: str, host_key: KeyPair,
               user_data: str | None) -> SeedFiles:
    """The NoCloud seed of `vm`: meta-data, user-data (merged with `user_data`, the user's own
    text, when given) and network-config. `login_key` is ravel's public key line."""
    return SeedFiles(render_meta_data(ap, vm, instance_id).encode(),
                     render_user_data(ap, vm, login_key, host_key, user_data).encode(),
                     render_network_config(ap, vm).encode())
