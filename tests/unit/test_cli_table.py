"""The launcher's command table (cli/launch.py): every command the CLI registers is in it,
under the module that registers it, and a command loads only its own module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.main import get_command_name

from ravel.cli import launch
from ravel.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
BY_LAUNCHER = {"ssh", "proxy"}  # started without typer at all


def test_every_registered_command_is_in_the_table_under_its_module() -> None:
    registered = {(c.name or get_command_name(c.callback.__name__)): c.callback.__module__.rsplit(".", 1)[1]
                  for c in app.registered_commands}
    for g in app.registered_groups:
        registered[g.name] = sys.modules[g.typer_instance.registered_commands[0].callback.__module__].__name__.rsplit(".", 1)[1]
    assert {k: v for k, v in registered.items() if k not in BY_LAUNCHER} == launch.COMMANDS


def test_a_command_loads_its_own_module_only() -> None:
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print(sorted(m for m in sys.modules if m.startswith('ravel.cli.cmd_') "
             "or m in ('ravel.run.publish', 'ravel.run.lab')), file=sys.stderr))\n"
             "sys.argv = ['ravel', 'cp', '--help']\n"
             "from ravel.cli.launch import main\n"
             "main()\n")
    p = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Usage: ravel cp" in p.stdout, p.stderr
    assert p.stderr.strip().splitlines()[-1] == "['ravel.cli.cmd_access']"
