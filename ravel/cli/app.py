"""`ravel` command line: parse, call the library, render, and map errors to exit codes.

Commands live in one module per area (cmd_*.py); importing them registers them on `app`.
"""

from __future__ import annotations

from . import cmd_lab, cmd_plan  # noqa: F401  (registers commands)
from . import cmd_snapshot  # noqa: F401  (snapshots, store, import)
from . import cmd_cloud  # noqa: F401  (gc)
from . import cmd_access  # noqa: F401  (ssh, exec, cp, vnc, ssh-config, inventory)
from . import cmd_ci  # noqa: F401  (run)
from . import cmd_doctor  # noqa: F401  (doctor)
from . import cmd_net  # noqa: F401  (netem, link, capture)
from . import cmd_view  # noqa: F401  (graph, ui)
from .common import app  # noqa: F401  (the app, every command registered: tests use it)
from .entry import run


def main() -> None:
    run()
