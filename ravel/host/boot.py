"""`ravel-host boot`: one process per host for a start in waves (ravel/run/waves.py). It starts
the host's next guests when told (an apply, without a runtime start for each wave) and reports
which of its booting guests are ready, until the caller hangs up.

Starting the runtime for every wave cost each new guest a Python start-up and a watch restarted
with it, on the same cores the booting guests need: about a second a guest (issue 14's scale
benchmark). Here the process, its imports and its watch stay up for the whole start.

A line protocol, JSON lines both ways:
  in, first:  {"run_dir", "checks": [...], "interval"?, "max_s"?, "slow"?}  (as wait-ready's)
  in, later:  {"checks": [...], "slow"?}   watch these guests from now on
              {"apply": DESIRED}          reconcile to DESIRED (host/apply.py), then report it
              anything else, or the end of stdin: the caller is done
  out:        {"vms": {...}} every `interval` seconds (host/ready.py's report), and
              {"applied": REPORT} after each apply
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, Dict

from . import ready
from .apply import apply_desired
from .desired import DesiredError, parse_desired
from .proc import CommandFailed
from .snapshot import LineReader

REQUEST_WAIT_S = 60.0


def main(stdin_fd: int = 0, stdout: Any = None) -> int:
    out = stdout or sys.stdout
    lock = threading.Lock()

    def say(doc: Dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(doc) + "\n")
            out.flush()

    reader = LineReader(stdin_fd)
    request = _json(reader.readline(REQUEST_WAIT_S))
    problems = ready.checks_of(request)
    if problems:
        say({"error": "; ".join(problems)})
        return 2
    interval = float(request.get("interval") or ready.WATCH_INTERVAL_S)
    deadline = time.monotonic() + float(request.get("max_s") or ready.WATCH_MAX_S)
    watching = [request]  # the checks in force; replaced whole, read by the watcher
    done = threading.Event()

    def watch() -> None:
        # in its own thread: a guest that does not answer yet costs its check's timeouts, and
        # the next wave's apply must not wait for them
        while not done.is_set():
            if watching[0]["checks"]:  # nothing to say of a host with no guest booting
                say(ready.check_all(watching[0]))
            done.wait(interval)

    watcher = threading.Thread(target=watch, daemon=True, name="watch")
    watcher.start()
    while time.monotonic() < deadline:
        line = reader.readline(min(1.0, max(0.0, deadline - time.monotonic())))
        if line is None:
            continue
        doc = _json(line)
        if isinstance(doc.get("checks"), list) and not ready.checks_of(doc):
            watching[0] = {**watching[0], "checks": doc["checks"], "slow": doc.get("slow", request.get("slow"))}
        elif isinstance(doc.get("apply"), dict):
            say({"applied": _apply(doc["apply"])})
        else:
            break  # the end of stdin, or a word: the caller is done
    done.set()
    watcher.join(1.0)
    if watcher.is_alive():
        # a check still waiting on a guest (up to its bounds) is not worth waiting for, and the
        # checks' thread pool would hold the interpreter's exit until it ends: the caller is done
        with lock:
            out.flush()
            os._exit(0)
    return 0


def _json(line: Any) -> Dict[str, Any]:
    try:
        doc = json.loads(line or "")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _apply(doc: Dict[str, Any]) -> Dict[str, Any]:
    try:
        desired = parse_desired(doc)
    except DesiredError as exc:
        return {"converged": False, "errors": exc.problems}
    try:
        return apply_desired(desired)
    except CommandFailed as exc:  # observing the host failed (as `ravel-host apply` reports it)
        return {"converged": False, "errors": [str(exc)]}
