"""The command line (typer): one module per area, registered by import in app.py."""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_loading(signum, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    os.write(2, b"interrupted\n")
    os._exit(130)


# Ctrl-C while the CLI's libraries are still loading (a few hundred ms) printed a traceback from
# deep inside rich or typer; it now ends like any interrupted command. main() hands SIGINT back
# to Python's KeyboardInterrupt, which the commands handle. Only when this process is `ravel`:
# a program that imports ravel.cli keeps its own Ctrl-C.
_argv0 = sys.argv[0] if sys.argv else ""
if ((os.path.basename(_argv0) == "ravel" or _argv0.endswith(os.path.join("ravel", "__main__.py")))
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
    signal.signal(signal.SIGINT, _interrupted_while_loading)
