"""The routes of `ravel ui` (Starlette). Pages are plain HTML made here; the page's own script
(static/ui.js) does the rest: the event stream, the buttons, xterm.js and noVNC.

GET  /                              the apps
GET  /app/APP                       the app's page: topology, VMs, console and VNC panels
GET  /api/app/APP/graph.svg         its topology (ravel graph's SVG, as last observed)
GET  /api/app/APP/state             its VMs now (JSON)
GET  /api/app/APP/events            server-sent events: the same JSON each time it changes
POST /api/app/APP/start|stop        {"vms": [...]} (none: every VM); 202, the outcome in events
WS   /ws/app/APP/console/VM         the serial console
WS   /ws/app/APP/vnc/VM             VNC (RFB), for noVNC
/static, /vendor                    the page's script; xterm.js and noVNC with their licences
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from ..errors import RavelError
from .guard import TokenGuard
from .live import Live
from .relay import bridge, open_console, open_tcp

STATIC = Path(__file__).parent / "static"
VENDOR = STATIC / "vendor"
EVENT_POLL_S = 0.25  # how often an event stream looks for a new version of its app
KEEPALIVE_S = 15.0
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise RavelError(f"not an app or VM name: {value!r}")
    return value


def _page(title: str, body: str, scripts: str = "") -> HTMLResponse:
    return HTMLResponse(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} · ravel</title>
<meta name="referrer" content="no-referrer">
<link rel="stylesheet" href="/static/ui.css">
{scripts}</head>
<body>{body}
<footer>ravel ui · <a href="/vendor/licenses">third-party licences</a></footer>
</body></html>""", headers={"cache-control": "no-store"})


def make_app(live: Live, token: str, port: int, vendor: Path = VENDOR) -> Any:
    have_vendor = (vendor / "xterm" / "xterm.js").is_file() and (vendor / "novnc" / "core" / "rfb.js").is_file()

    async def index(request: Request) -> Response:
        apps = await asyncio.to_thread(live.apps)
        rows = "".join(f'<li><a href="/app/{html.escape(a["name"])}">{html.escape(a["name"])}</a> '
                       f'<span class="muted">{html.escape(a["status"])}, {a["vms"]} VMs, {html.escape(a["provider"])}</span></li>'
                       for a in apps) or "<li>no apps: <code>ravel publish FILE</code></li>"
        return _page("apps", f"<header><h1>ravel</h1></header><main><h2>Apps</h2><ul id=apps>{rows}</ul></main>")

    async def app_page(request: Request) -> Response:
        app = _name(request.path_params["app"])
        view = await asyncio.to_thread(live.view, app)
        if view.graph is None:
            return _page(app, f"<main><h1>{html.escape(app)}</h1><p class=error>{html.escape(view.error or 'unknown app')}</p>"
                              '<p><a href="/">all apps</a></p></main>')
        svg = await asyncio.to_thread(live.svg, app)
        svg = svg[svg.find("<svg"):]
        missing = "" if have_vendor else ('<p class=error>xterm.js/noVNC are not installed here: run '
                                          '<code>make ui-assets</code> (tools/ui_assets.sh)</p>')
        body = f"""<header><h1><a href="/">ravel</a> / <span id=app-name>{html.escape(app)}</span></h1>
<div class=actions><button id=start-all data-action=start>Start all</button>
<button id=stop-all data-action=stop>Stop all</button>
<span id=action class=muted></span><span id=live class=muted>connecting…</span></div></header>
{missing}
<main data-app="{html.escape(app)}">
<section id=topology><h2>Topology</h2><div id=graph>{svg}</div></section>
<section id=vms><h2>VMs</h2><table><thead><tr><th>VM</th><th>host</th><th>state</th><th>ready</th>
<th>addresses</th><th>services</th><th></th></tr></thead><tbody id=vm-rows></tbody></table></section>
<section id=panel hidden><h2><span id=panel-title></span> <button id=panel-close>close</button></h2>
<div id=term></div><div id=vnc></div><p id=panel-status class=muted></p></section>
</main>
<script>window.RAVEL_STATE = {json.dumps(view.doc())};</script>"""
        scripts = ('<link rel="stylesheet" href="/vendor/xterm/xterm.css">\n'
                   '<script src="/vendor/xterm/xterm.js"></script>\n'
                   '<script src="/vendor/xterm-addon-fit/addon-fit.js"></script>\n'
                   '<script type="module" src="/static/ui.js"></script>')
        return _page(app, body, scripts)

    async def graph_svg(request: Request) -> Response:
        app = _name(request.path_params["app"])
        svg = await asyncio.to_thread(live.svg, app)
        return Response(svg, media_type="image/svg+xml", headers={"cache-control": "no-store"})

    async def state(request: Request) -> Response:
        view = await asyncio.to_thread(live.view, _name(request.path_params["app"]))
        return JSONResponse(view.doc(), headers={"cache-control": "no-store"})

    async def events(request: Request) -> Response:
        app = _name(request.path_params["app"])

        async def stream() -> AsyncIterator[str]:
            sent = -1
            quiet = 0.0
            while not await request.is_disconnected():
                view = await asyncio.to_thread(live.view, app)  # also keeps its watcher alive
                if view.version != sent:
                    sent = view.version
                    quiet = 0.0
                    yield f"data: {json.dumps(view.doc())}\n\n"
                elif quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(EVENT_POLL_S)
                quiet += EVENT_POLL_S

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def act(request: Request) -> Response:
        app = _name(request.path_params["app"])
        verb = request.path_params["verb"]
        if verb not in ("start", "stop"):
            return PlainTextResponse("unknown action\n", status_code=404)
        try:
            body = await request.json() if (await request.body()) else {}
        except ValueError:
            return PlainTextResponse("the body is not JSON\n", status_code=400)
        vms = [_name(v) for v in (body.get("vms") or [])] if isinstance(body, dict) else []
        await asyncio.to_thread(live.set_running, app, vms, verb == "start")
        return JSONResponse({"app": app, "action": verb, "vms": vms}, status_code=202)

    async def console_ws(ws: WebSocket) -> None:
        app, vm = _name(ws.path_params["app"]), _name(ws.path_params["vm"])
        await ws.accept()
        try:
            opened = await asyncio.to_thread(open_console, live.paths, app, vm)
        except RavelError as exc:
            await ws.send_bytes(f"\r\n[ravel: {exc.message}]\r\n".encode())
            await ws.close(code=1011)
            return
        await bridge(ws, opened)

    async def vnc_ws(ws: WebSocket) -> None:
        app, vm = _name(ws.path_params["app"]), _name(ws.path_params["vm"])
        asked = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        await ws.accept(subprotocol="binary" if "binary" in asked else None)
        try:
            port = await asyncio.to_thread(live.vnc_port, app, vm)
            opened = await asyncio.to_thread(open_tcp, port)
        except (RavelError, OSError) as exc:
            await ws.close(code=1011, reason=str(getattr(exc, "message", exc))[:120])
            return
        await bridge(ws, opened)

    async def licences(request: Request) -> Response:
        parts = []
        for rel, what in (("xterm/LICENSE", "xterm.js (npm @xterm/xterm)"),
                          ("xterm-addon-fit/LICENSE", "xterm.js fit add-on (npm @xterm/addon-fit)"),
                          ("novnc/COPYRIGHT", "noVNC (Debian package novnc)")):
            f = vendor / rel
            text = f.read_text(errors="replace") if f.is_file() else "(not installed: make ui-assets)"
            parts.append(f"<h2>{html.escape(what)}</h2><pre>{html.escape(text)}</pre>")
        return _page("licences", "<main>" + "".join(parts) + "</main>")

    async def failed(request: Request, exc: Exception) -> Response:
        message = exc.message if isinstance(exc, RavelError) else str(exc)
        return PlainTextResponse(message + "\n", status_code=404 if "no app" in message or "not an app" in message else 500)

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/app/{app}", app_page),
        Route("/api/app/{app}/graph.svg", graph_svg),
        Route("/api/app/{app}/state", state),
        Route("/api/app/{app}/events", events),
        Route("/api/app/{app}/{verb}", act, methods=["POST"]),
        WebSocketRoute("/ws/app/{app}/console/{vm}", console_ws),
        WebSocketRoute("/ws/app/{app}/vnc/{vm}", vnc_ws),
        Route("/vendor/licenses", licences),
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
        Mount("/vendor", StaticFiles(directory=vendor, check_dir=False), name="vendor"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenGuard, token=token, port=port)],
                     exception_handlers={RavelError: failed})
