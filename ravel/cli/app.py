"""`ravel` command line: parse, call the library, render, and map errors to exit codes.

Commands live in one module per area (cmd_*.py); importing them registers them on `app`.
"""

from __future__ import annotations

import signal
import sys

from . import _interrupted_while_loading
from . import cmd_lab, cmd_plan  # noqa: F401  (registers commands)
from . import cmd_snapshot  # noqa: F401  (snapshots, store, import)
from . import cmd_cloud  # noqa: F401  (gc)
from . import cmd_access  # noqa: F401  (ssh, exec, cp, vnc, ssh-config, inventory)
from . import cmd_ci  # noqa: F401  (run)
from . import cmd_doctor  # noqa: F401  (doctor)
from . import cmd_net  # noqa: F401  (netem, link, capture)
from . import cmd_view  # noqa: F401  (graph, ui)
from .common import app
from .exits import run_json, wants_json


def main() -> None:
    if signal.getsignal(signal.SIGINT) is _interrupted_while_loading:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if wants_json(sys.argv[1:]):  # even a usage error is then a JSON document (docs/json.md)
        sys.exit(run_json(lambda: app(prog_name="ravel", standalone_mode=False)))
    app(prog_name="ravel")
