"""`ravel ssh-config APP`: the guests as OpenSSH `Host` blocks, with the pinned keys written."""

from __future__ import annotations

from .. import keys
from ..run.sessions import Context
from .guest import guests
from .openssh import config, write_known_hosts


def ssh_config(ctx: Context, app: str) -> str:
    found = guests(ctx, app)
    key_file, _ = keys.user_key(keys.directory(ctx.paths.state))
    known = write_known_hosts(ctx.paths, app, found)
    return f"# ravel ssh-config {app}: `ssh -F FILE <vm>.{app}`\n" + config(found, known, key_file)
