"""The apps as the page shows them, kept fresh by threads that own their own Lab (the state and
host sessions are not shared between threads):

- a watcher per app someone is looking at: `ravel status` every POLL_S, turned into the graph's
  view of each VM (state, readiness, colours, caption); it stops when nobody has looked for
  IDLE_S;
- one worker that runs start/stop (they take the app's lock and can take a while), reporting
  what it is doing and how it ended in the app's view;
- the VNC forwards of ravel/access/vnc.py, one per VM, started on first use.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..access.vnc import forward
from ..errors import RavelError
from ..graph.dot import to_dot
from ..graph.model import Graph, colours, look, vm_caption
from ..graph.source import app_graph, observed
from ..graph.svg import to_svg
from ..paths import Paths
from ..run.lab import Lab

POLL_S = 1.0  # how often a watched app's status is read: the page is at most ~2 s behind
IDLE_S = 30.0  # a watcher nobody asked for this long stops
FORWARD_S = 20.0  # how long a VNC forward may take to listen


def vm_views(g: Graph) -> list[dict[str, Any]]:
    """What the page needs of each VM: the graph's colours and caption, the table's cells."""
    out = []
    for v in g.vms:
        fill, border = colours(v)
        out.append({"name": v.name, "host": v.host, "state": v.state, "ready": v.ready, "look": look(v),
                     "fill": fill, "border": border, "caption": vm_caption(v), "services": list(v.services),
                     "ips": [n.ip for n in v.nics if n.ip]})
    return out


@dataclass
class AppView:
    app: str
    version: int = 0
    vms: list[dict[str, Any]] = field(default_factory=list)
    graph: Graph | None = None
    error: str | None = None  # the last status failed: why
    action: str | None = None  # what the worker is doing for this app, or how it ended
    asked: float = field(default_factory=time.monotonic)

    def doc(self) -> dict[str, Any]:
        return {"app": self.app, "version": self.version, "vms": self.vms, "error": self.error,
                "action": self.action}


class Live:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._lock = threading.Lock()
        self._views: dict[str, AppView] = {}
        self._watchers: dict[str, threading.Thread] = {}
        self._stop = threading.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ravel-ui-action")
        self._forwards: dict[tuple[str, str], tuple[int, threading.Event, threading.Thread]] = {}

    # -- reading -----------------------------------------------------------------------------

    def apps(self) -> list[dict[str, Any]]:
        lab = Lab(self.paths)
        try:
            return [{"name": h.app, "status": h.status, "vms": len(h.vm_names), "provider": h.provider}
                    for h in lab.health() if h.recorded]
        finally:
            lab.close()

    def view(self, app: str) -> AppView:
        """The app's current view; starts its watcher (and waits for its first look) if none runs."""
        with self._lock:
            v = self._views.setdefault(app, AppView(app))
            v.asked = time.monotonic()
            t = self._watchers.get(app)
            if t is None or not t.is_alive():
                first = threading.Event()
                t = threading.Thread(target=self._watch, args=(app, first), daemon=True, name=f"ravel-ui-{app}")
                self._watchers[app] = t
                t.start()
            else:
                first = None
        if first is not None:
            first.wait(POLL_S * 15)
        return v

    def svg(self, app: str) -> str:
        """The app's topology (ravel graph's SVG), with each VM as last observed."""
        v = self.view(app)
        if v.graph is None:
            raise RavelError(v.error or f"app {app!r} could not be read")
        return to_svg(to_dot(v.graph))

    def _watch(self, app: str, first: threading.Event) -> None:
        lab = Lab(self.paths)
        view = self._views[app]
        try:
            while not self._stop.is_set() and time.monotonic() - view.asked < IDLE_S:
                started = time.monotonic()
                try:
                    g = observed(app_graph(lab.ctx, app), lab.status(app))
                    vms, error = vm_views(g), None
                except RavelError as exc:
                    g, vms, error = view.graph, view.vms, exc.message
                except Exception as exc:  # noqa: BLE001 - the page says it; the watcher goes on
                    g, vms, error = view.graph, view.vms, f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if vms != view.vms or error != view.error or view.graph is None:
                        view.vms, view.error, view.graph = vms, error, g
                        view.version += 1
                first.set()
                self._stop.wait(max(0.1, POLL_S - (time.monotonic() - started)))
        finally:
            first.set()
            lab.close()

    # -- acting ------------------------------------------------------------------------------

    def set_running(self, app: str, vms: list[str] | None, running: bool) -> None:
        """Start or stop (all of the app's VMs when `vms` is empty) on the worker; the outcome
        shows in the app's view."""
        verb = "start" if running else "stop"
        what = f"{verb} {' '.join(vms) if vms else 'all VMs'}"
        view = self.view(app)
        self._say(view, f"{what}: running")

        def run() -> None:
            lab = Lab(self.paths)
            try:
                changed = lab.set_running(app, vms or None, running)
                self._say(view, f"{what}: done ({changed} change{'s' if changed != 1 else ''})")
            except RavelError as exc:
                self._say(view, f"{what}: failed: {exc.message}")
            except Exception as exc:  # noqa: BLE001 - the page says it; the server goes on
                self._say(view, f"{what}: failed: {type(exc).__name__}: {exc}")
            finally:
                lab.close()

        self._worker.submit(run)

    def _say(self, view: AppView, text: str) -> None:
        with self._lock:
            view.action = text
            view.version += 1

    # -- VNC ---------------------------------------------------------------------------------

    def vnc_port(self, app: str, vm: str) -> int:
        """The port on 127.0.0.1 of the VM's `ravel vnc` forward, started on first use."""
        key = (app, vm)
        with self._lock:
            have = self._forwards.get(key)
            if have is not None and have[2].is_alive():
                return have[0]
        stop = threading.Event()
        ready = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            lab = Lab(self.paths)
            try:
                forward(lab.ctx, app, vm, None, lambda url: (box.update(port=int(url.rsplit(":", 1)[1])), ready.set()),
                        stop)
            except RavelError as exc:
                box["error"] = exc
            except Exception as exc:  # noqa: BLE001
                box["error"] = RavelError(f"{type(exc).__name__}: {exc}")
            finally:
                ready.set()
                lab.close()

        t = threading.Thread(target=run, daemon=True, name=f"ravel-ui-vnc-{app}-{vm}")
        t.start()
        if not ready.wait(FORWARD_S) or "port" not in box:
            stop.set()
            raise box.get("error") or RavelError(f"the VNC forward of {vm} did not start")
        with self._lock:
            self._forwards[key] = (box["port"], stop, t)
        return box["port"]

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            forwards = list(self._forwards.values())
            self._forwards.clear()
        for _, stop, _t in forwards:
            stop.set()
        self._worker.shutdown(wait=False, cancel_futures=True)
