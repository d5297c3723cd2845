"""Running the typer app once its commands are registered: all of them (app.py), or only the
one the command line names (launch.py's table)."""

from __future__ import annotations

import signal
import sys

from . import _interrupted_while_loading
from .common import app
from .exits import run_json, wants_json


def run() -> None:
    if signal.getsignal(signal.SIGINT) is _interrupted_while_loading:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if wants_json(sys.argv[1:]):  # even a usage error is then a JSON document (docs/json.md)
        sys.exit(run_json(lambda: app(prog_name="ravel", standalone_mode=False)))
    app(prog_name="ravel")
