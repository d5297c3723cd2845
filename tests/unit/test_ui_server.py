"""`ravel ui` without a browser or a lab: the token, the Host header and websocket origins are
checked before any route runs; the routes answer from a fake Live."""

from __future__ import annotations

import json
import socket

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from ravel.graph.model import HostRow, Live as LiveVm, VmRow, from_records, with_live
from ravel.run.blueprints import read_blueprint
from ravel.ui.guard import cookie_name
from ravel.ui.live import AppView, vm_views
from ravel.ui.serve import listen
from ravel.ui.server import make_app

from .test_graph import ROOT

PORT = 8765
TOKEN = "t0ken-for-tests"
BASE = f"http://127.0.0.1:{PORT}"


class FakeLive:
    paths = None

    def __init__(self) -> None:
        bp = read_blueprint(str(ROOT / "blueprints/demo.yaml"))
        g = from_records(bp, "demo", [HostRow("host-1", "local-small", "tcg")],
                         [VmRow(v.name, "host-1", "running", [], []) for v in bp.vms])
        self.graph = with_live(g, {"db": LiveVm("running", "ready")})
        self.acts: list[tuple[str, list[str], bool]] = []

    def apps(self):
        return [{"name": "demo", "status": "running", "vms": 4, "provider": "local"}]

    def view(self, app):
        if app != "demo":
            return AppView(app, error=f"no app named {app!r}")
        return AppView(app, version=3, vms=vm_views(self.graph), graph=self.graph)

    def svg(self, app):
        return '<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><g id="vm-db"/></svg>'

    def set_running(self, app, vms, running):
        self.acts.append((app, vms, running))


@pytest.fixture
def live():
    return FakeLive()


@pytest.fixture
def client(live):
    return TestClient(make_app(live, TOKEN, PORT), base_url=BASE)


def test_without_the_token_everything_is_403(client):
    for path in ("/", "/app/demo", "/api/app/demo/state", "/static/ui.js", "/vendor/licenses", "/?token=wrong"):
        r = client.get(path)
        assert r.status_code == 403, path
    assert client.post("/api/app/demo/stop", json={}).status_code == 403


def test_the_token_becomes_a_cookie_and_leaves_the_url(client):
    r = client.get(f"/app/demo?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/app/demo"
    assert f"{cookie_name(PORT)}={TOKEN}" in r.headers["set-cookie"]
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
    r = client.get("/app/demo")  # the cookie now
    assert r.status_code == 200 and 'id="vm-db"' in r.text and "/vendor/xterm/xterm.js" in r.text
    assert "cdn" not in r.text.lower() and "https://" not in r.text


def test_another_host_header_is_refused(live):
    c = TestClient(make_app(live, TOKEN, PORT), base_url=f"http://evil.example:{PORT}")
    assert c.get(f"/?token={TOKEN}").status_code == 403
    c = TestClient(make_app(live, TOKEN, PORT), base_url=f"http://localhost:{PORT}")
    assert c.get(f"/?token={TOKEN}", follow_redirects=False).status_code == 303


def test_pages_and_api(client, live):
    client.cookies.set(cookie_name(PORT), TOKEN)
    assert "demo" in client.get("/").text
    doc = client.get("/api/app/demo/state").json()
    assert doc["version"] == 3 and {v["name"] for v in doc["vms"]} == {"web-1", "web-2", "db", "hv"}
    assert client.get("/api/app/demo/graph.svg").headers["content-type"].startswith("image/svg+xml")
    r = client.post("/api/app/demo/stop", json={"vms": ["web-1"]}, headers={"origin": BASE})
    assert r.status_code == 202 and live.acts == [("demo", ["web-1"], False)]
    assert client.post("/api/app/demo/start", json={}).status_code == 202  # no Origin: a non-browser client
    assert client.post("/api/app/demo/stop", json={}, headers={"origin": "http://evil.example"}).status_code == 403
    assert client.post("/api/app/demo/stop", json={"vms": ["../x"]}).status_code == 404
    assert "unknown app" not in client.get("/app/nosuch").text and "no app named" in client.get("/app/nosuch").text


def test_websocket_needs_token_and_this_origin(client):
    path = "/ws/app/demo/console/db"
    client.cookies.set(cookie_name(PORT), TOKEN)
    for headers in ({"origin": "http://evil.example"}, {"origin": f"http://127.0.0.1:{PORT + 1}"}, {}):
        with pytest.raises(WebSocketDisconnect) as e:
            with client.websocket_connect(path, headers=headers):
                pass
        assert e.value.code == 1008
    client.cookies.clear()
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect(path, headers={"origin": BASE}):
            pass


def test_listens_on_loopback_only():
    s = listen(None)
    try:
        assert s.getsockname()[0] == "127.0.0.1" and s.family == socket.AF_INET
    finally:
        s.close()


def test_views_carry_colours_and_captions(live):
    doc = json.loads(json.dumps(live.view("demo").doc()))
    db = next(v for v in doc["vms"] if v["name"] == "db")
    assert db["look"] == "running" and db["caption"][1] == "running, ready" and db["fill"].startswith("#")
