"""`ravel inventory APP`: an Ansible inventory of the app's guests, reached with the app's
`ravel ssh-config` (written next to the state and named in the inventory), grouped by the
blueprint's VM groups (a `count` group: web-1..web-N in `web`) and by network."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..run.publish import stored_blueprint
from ..run.sessions import Context
from .guest import Guest, guests
from .sshconfig import ssh_config

FORMATS = ("ini", "yaml", "json")


def group_name(name: str) -> str:
    """Ansible's group names are identifiers: web-tier -> web_tier."""
    out = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return out if not out[:1].isdigit() else f"_{out}"


def ssh_config_file(ctx: Context, app: str) -> Path:
    path = ctx.paths.state / "ssh_config" / app
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = ssh_config(ctx, app)
    tmp = path.with_name(f".{app}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def inventory(ctx: Context, app: str, fmt: str) -> str:
    found = [g for g in guests(ctx, app) if g.user and g.host_key and g.address]
    bp = stored_blueprint(ctx, app)
    by_vm = {vm.name: vm for vm in bp.vms}
    config = ssh_config_file(ctx, app)
    groups: dict[str, list[str]] = {}
    for g in found:
        vm = by_vm.get(g.vm)
        if vm is not None and vm.group != g.vm:
            groups.setdefault(group_name(vm.group), []).append(g.alias)
        for net in (vm.nics if vm else ()):
            groups.setdefault(group_name(net.network), []).append(g.alias)
    for members in groups.values():
        members[:] = sorted(set(members))
    variables = {"ansible_ssh_common_args": f"-F {config}", "ansible_python_interpreter": "auto_silent"}
    return render(app, found, groups, variables, fmt)


def render(app: str, found: Sequence[Guest], groups: Mapping[str, list[str]], variables: Mapping[str, str],
           fmt: str) -> str:
    hostvars = {g.alias: {"ansible_host": g.alias, "ansible_user": g.user} for g in found}
    if fmt == "ini":
        lines = [f"# ravel inventory {app}", "[all]"]
        lines += [f"{h} " + " ".join(f"{k}={v}" for k, v in hv.items()) for h, hv in hostvars.items()]
        for name, members in sorted(groups.items()):
            lines += ["", f"[{name}]", *members]
        lines += ["", "[all:vars]", *(f"{k}='{v}'" for k, v in variables.items())]
        return "\n".join(lines) + "\n"
    doc: dict[str, Any] = {"all": {"hosts": hostvars, "vars": dict(variables),
                                   "children": {name: {"hosts": {m: {} for m in members}}
                                                for name, members in sorted(groups.items())}}}
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    import yaml

    return f"# ravel inventory {app}\n" + yaml.safe_dump(doc, sort_keys=False)
