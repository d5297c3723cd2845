"""What OpenSSH's client needs to reach a guest the way ravel does: the guest's name
`<vm>.<app>`, ravel's login key, the host key ravel made for the guest pinned in a known_hosts
file of ravel's own (strict checking: a different key is refused, nothing is trusted on first
use), and `ravel proxy` as the ProxyCommand, so the connection goes through the VM's host.

`ravel ssh` runs `ssh` with these as options; `ravel ssh-config` prints them as `Host` blocks
for ssh, scp, rsync, Ansible and testinfra."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..paths import Paths
from .guest import Guest

# what decides where ravel keeps its files: the proxy started by ssh must find the same state
HOME_VARS = ("RAVEL_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME")


def known_hosts_path(paths: Paths, app: str) -> Path:
    return paths.state / "known_guests" / app


def write_known_hosts(paths: Paths, app: str, guests: Iterable[Guest]) -> Path:
    """The app's pinned guest keys as a known_hosts file (0600), replaced atomically so an
    ssh reading it meanwhile sees the old one or the new one."""
    path = known_hosts_path(paths, app)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = "".join(f"{g.alias} {g.host_key}\n" for g in guests if g.host_key)
    if path.exists() and path.read_text() == text:
        return path
    tmp = path.with_name(f".{app}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def proxy_command(g: Guest, env: Mapping[str, str] | None = None) -> str:
    """`ravel proxy` as ssh runs it (through the user's shell, `%p` the port), with the
    environment that locates ravel's state, and `--fdpass` where the host is a namespace."""
    env = os.environ if env is None else env
    home = [f"{k}={shlex.quote(env[k])}" for k in HOME_VARS if env.get(k)]
    # ssh runs it as `exec LINE` in the user's shell
    words = [*(["env", *home] if home else []), shlex.quote(sys.executable), "-m", "ravel", "proxy",
             shlex.quote(g.app), shlex.quote(g.vm)]
    # ssh expands %-tokens in the whole line: a literal % is written %%
    line = " ".join(w.replace("%", "%%") for w in words) + " %p"
    return line + " --fdpass" if g.via == "netns" else line


def options(g: Guest, known_hosts: Path, key_file: Path, env: Mapping[str, str] | None = None,
            proxy: str | None = None) -> list[tuple[str, str]]:
    """`proxy`: a ProxyCommand handing ssh a connection ravel made (handover.py) instead of
    `ravel proxy`."""
    assert g.user and g.host_key and g.address, "checked by guest.require_ssh"
    opts = [
        ("HostName", g.address),  # for the reader: the connection is made by the ProxyCommand
        ("User", g.user),
        ("Port", "22"),
        ("IdentityFile", str(key_file)),
        ("IdentitiesOnly", "yes"),
        ("UserKnownHostsFile", str(known_hosts)),
        ("GlobalKnownHostsFile", "/dev/null"),
        ("HostKeyAlias", g.alias),
        ("StrictHostKeyChecking", "yes"),
        ("UpdateHostKeys", "no"),
        ("CheckHostIP", "no"),
        ("PasswordAuthentication", "no"),
        ("KbdInteractiveAuthentication", "no"),
        ("ProxyCommand", proxy or proxy_command(g, env)),
    ]
    if g.via == "netns":
        opts.append(("ProxyUseFdpass", "yes"))
    return opts


def _value(key: str, v: str) -> str:
    # ProxyCommand takes the rest of its line as a shell command; other values with spaces are quoted
    return f'"{v}"' if key != "ProxyCommand" and any(c.isspace() for c in v) else v


def config(guests: Sequence[Guest], known_hosts: Path, key_file: Path, env: Mapping[str, str] | None = None) -> str:
    """One `Host <vm>.<app>` block per guest ravel can log in to."""
    blocks = []
    for g in guests:
        if not (g.user and g.host_key and g.address):
            blocks.append(f"# {g.alias}: no SSH (no cloud_init host key or no address); "
                          f"use `ravel exec {g.app} {g.vm}` or `ravel console {g.app} {g.vm}`\n")
            continue
        body = "".join(f"  {k} {_value(k, v)}\n" for k, v in options(g, known_hosts, key_file, env))
        blocks.append(f"Host {g.alias}\n{body}")
    return "\n".join(blocks)


def remote_command(args: Sequence[str]) -> list[str]:
    """The command ssh sends to the guest's shell: one argument is a shell command line, as
    ssh takes it (`ravel ssh lab a -- 'ls | wc -l'`); several are one command's exact argv,
    each word quoted (`ravel ssh lab a -- sh -c 'exit 7'`), as docker exec runs them."""
    if len(args) <= 1:
        return list(args)
    return [" ".join(shlex.quote(a) for a in args)]


def ssh_argv(g: Guest, known_hosts: Path, key_file: Path, command: Sequence[str], extra: Sequence[str] = (),
             proxy: str | None = None) -> list[str]:
    argv = ["ssh", "-F", "/dev/null"]
    for k, v in options(g, known_hosts, key_file, proxy=proxy):
        argv += ["-o", f"{k}={v}"]
    return [*argv, "-o", "LogLevel=ERROR", *extra, "--", g.alias, *remote_command(command)]
