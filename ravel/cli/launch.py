"""`ravel`'s entry point. The commands that tools start again and again (`ravel proxy`, run by
ssh for every connection; `ravel ssh`, run by scripts and CI per command) go straight to their
module, without loading the CLI (typer, rich and every command: most of a second). Every other
command loads the one module that registers it (`COMMANDS`), not all of them: importing every
command module (the planner, the publish pipeline, dpkt, the pydantic models) was most of the
CLI's 0.6 s start-up. `ravel --help` or an unknown word loads them all (app.py);
tests/unit/test_cli_table.py checks the table against what the modules register."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    **dict.fromkeys(("publish", "status", "list", "extend", "console", "logs", "stop", "start", "destroy"), "cmd_lab"),
    **dict.fromkeys(("validate", "plan", "schema"), "cmd_plan"),
    **dict.fromkeys(("snapshot", "snapshots", "import", "store"), "cmd_snapshot"),
    "gc": "cmd_cloud",
    **dict.fromkeys(("ssh-config", "exec", "cp", "vnc", "inventory"), "cmd_access"),
    "run": "cmd_ci",
    "doctor": "cmd_doctor",
    **dict.fromkeys(("netem", "link", "capture"), "cmd_net"),
    **dict.fromkeys(("graph", "ui"), "cmd_view"),
}


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["proxy"]:
        from ..access.proxy import main as proxy

        sys.exit(proxy(argv[1:]))
    if argv[:1] == ["ssh"]:
        from ..access.login import main as ssh

        sys.exit(ssh(argv[1:]))
    module = COMMANDS.get(argv[0]) if argv else None
    if module is None:
        from .app import main as cli

        cli()
        return
    importlib.import_module(f"{__package__}.{module}")
    from .entry import run

    run()
