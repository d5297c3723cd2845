"""`ravel`'s entry point. The commands that tools start again and again (`ravel proxy`, run by
ssh for every connection; `ravel ssh`, run by scripts and CI per command) go straight to their
module, without loading the CLI (typer, rich and every command: most of a second)."""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["proxy"]:
        from ..access.proxy import main as proxy

        sys.exit(proxy(argv[1:]))
    if argv[:1] == ["ssh"]:
        from ..access.login import main as ssh

        sys.exit(ssh(argv[1:]))
    from .app import main as cli

    cli()
