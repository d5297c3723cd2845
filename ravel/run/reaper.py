"""The local provider's reaper: one detached process per app with a lifetime (started by
run/lifetime.py), `python -m ravel.run.reaper APP PATHS_JSON`.

It sleeps until the app's expiry, reading the expiry from the state again every few seconds
(`ravel extend` moves it; a destroyed app or a newer reaper ends it), then destroys or stops
the app like `ravel destroy`/`ravel stop` would. A busy app (a publish still running) is tried
again until it is free. What went wrong is noted in the state, where `ravel status` shows it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ..errors import RavelError, StateError
from ..paths import Paths
from . import publish, teardown
from .lifetime import process_start
from .sessions import Context, open_state

POLL_S = 2.0  # how often the expiry is read again while waiting
RETRY_FIRST_S, RETRY_MAX_S = 2.0, 60.0


def reap(paths: Paths, app: str) -> str:
    """Wait for the app's expiry and act on it; returns what happened (for tests and logs)."""
    me, my_start = os.getpid(), process_start(os.getpid())
    state = open_state(paths)
    try:
        if state.lifetime(app) is not None:
            state.set_reaper(app, me, my_start)
        delay = RETRY_FIRST_S
        while True:
            rec = state.lifetime(app)
            if rec is None or state.app(app) is None:
                return "gone"  # destroyed by someone, or its lifetime dropped
            if rec.reaper_pid != me:
                return "replaced"  # a newer reaper took over
            left = rec.expires - time.time()
            if left > 0:
                time.sleep(min(left, POLL_S))
                continue
            ctx = Context(paths)
            try:
                if rec.action == "stop":
                    publish.set_running(ctx, app, None, False)
                    state.note_lifetime(app, "stopped at expiry")
                    state.set_reaper(app, None, None)
                    return "stopped"
                teardown.destroy(ctx, app)
                return "destroyed"
            except StateError as exc:
                if "busy" not in exc.message:
                    state.note_lifetime(app, f"the reaper could not {rec.action} it: {exc.message}")
            except RavelError as exc:
                state.note_lifetime(app, f"the reaper could not {rec.action} it: {exc.message}")
            finally:
                ctx.close()
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
    finally:
        state.close()


def main(argv: list[str]) -> int:
    app, doc = argv[0], json.loads(argv[1])
    paths = Paths(*(Path(doc[k]) for k in ("state", "data", "cache", "run")))
    try:
        reap(paths, app)
    except Exception as exc:  # a bug: say so where status shows it, then end
        try:
            state = open_state(paths)
            state.note_lifetime(app, f"the reaper failed: {type(exc).__name__}: {exc}")
            state.close()
        except Exception:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
