"""`ravel ui` in a real browser: Debian's headless chromium, driven by Selenium through Debian's
chromium-driver, against a small busybox lab (two guests on one namespace host). The page shows
every VM; stopping one from the page changes its state in the page and in `ravel status`, and
a change made with the CLI reaches the page within ~2 s; the console panel shows the guest's
prompt and a typed command's output; the VNC panel connects and draws. Without the token: 403;
listening on 127.0.0.1 only; a websocket from another origin is refused.

The lab runs twice: its hosts reached as namespaces, then over SSH (the console and VNC through
the host runtime's relay, as on a cloud). Screenshots go to .cache/artefacts/test_ui_browser/
(or $RAVEL_TEST_ARTEFACTS; ssh-*.png for the SSH lab).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import ROOT, Ravel, force_cleanup, leftovers, wait_until
from tests.jsonschemas import check

APP = f"ui{os.getpid()}"  # the netns lab; the ssh one is APP + "s"
CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
ARTEFACTS = Path(os.environ.get("RAVEL_TEST_ARTEFACTS") or ROOT / ".cache" / "artefacts") / "test_ui_browser"

BLUEPRINT = """\
name: uilab
networks:
  lan: {subnet: 10.40.0.0/24}
defaults:
  memory: 160MiB
  boot: {kernel: GUEST/vmlinuz, initrd: GUEST/initrd.img, cmdline: console=ttyS0 quiet}
vms:
  alpha:
    nics: [{network: lan, ip: 10.40.0.11}]
  beta:
    nics: [{network: lan, ip: 10.40.0.12}]
placement:
  host_types: [local-small]
"""

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
    pytest.fail("chromium and chromium-driver are missing: `make system` installs them")


@pytest.fixture(scope="module", params=["netns", "ssh"])
def lab(request, tmp_path_factory):
    """The lab, its hosts reached both ways: namespaces here (the console and VNC sockets
    reached directly) and SSH (through the host runtime's relay, as on a cloud)."""
    app = APP + ("s" if request.param == "ssh" else "")
    home = tmp_path_factory.mktemp(f"home-{request.param}")
    r = Ravel(home)
    bp = home / "uilab.yaml"
    bp.write_text(BLUEPRINT.replace("GUEST", str(ROOT / ".cache" / "guest")))
    try:
        r("publish", str(bp), "--name", app, "--transport", request.param, "--wait", "--timeout", "180")
        yield r, app
    finally:
        r("destroy", app, "--yes", check=False)
        left = leftovers(app, home)
        force_cleanup(app, home)
        assert not left, f"left behind: {left}"


@pytest.fixture(scope="module")
def ravel(lab):
    return lab[0]


@pytest.fixture(scope="module")
def app(lab):
    return lab[1]


@pytest.fixture(scope="module")
def server(ravel, app):
    """`ravel ui` as a user starts it; its URL from its first line."""
    proc = ravel.popen("ui")
    try:
        line = proc.stdout.readline()
        m = re.match(r"(http://127\.0\.0\.1:(\d+))/\?token=(\S+)", line)
        assert m, f"no URL: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        yield {"base": m.group(1), "port": int(m.group(2)), "token": m.group(3), "pid": proc.pid}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def browser(server, app, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1100"):
        opts.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: use the driver given, fetch nothing
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(f"{server['base']}/app/{app}?token={server['token']}")
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver, name: str) -> None:
    app = driver.current_url.rstrip("/").rsplit("/", 1)[-1]
    driver.save_screenshot(str(ARTEFACTS / f"{'ssh-' if app.endswith('s') else ''}{name}.png"))


def cell(driver, vm: str, what: str) -> str:
    """A cell of the VM table (read in the page: the table is redrawn on every event)."""
    return driver.execute_script(f"const c = document.querySelector('#row-{vm} td.{what}'); return c ? c.textContent : ''")


def click(driver, vm: str, which: str) -> None:
    driver.execute_script(f"document.querySelector('#row-{vm} button.{which}').click()")


def test_without_the_token_403_and_loopback_only(server, app):
    for url in (f"{server['base']}/", f"{server['base']}/app/{app}", f"{server['base']}/?token=nope"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=10)
        assert e.value.code == 403
    ss = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    mine = [line for line in ss.splitlines() if f"pid={server['pid']}," in line]
    assert mine and all(line.split()[3] == f"127.0.0.1:{server['port']}" for line in mine), mine


def test_websocket_from_another_origin_is_refused(server, app):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = f"ws://127.0.0.1:{server['port']}/ws/app/{app}/console/alpha"
    cookie = {"Cookie": f"ravel-ui-{server['port']}={server['token']}"}
    with pytest.raises(InvalidStatus) as e:
        connect(url, origin="http://evil.example", additional_headers=cookie, open_timeout=10)
    assert e.value.response.status_code == 403
    with pytest.raises(InvalidStatus):  # the right origin, no token
        connect(url, origin=server["base"], open_timeout=10)


def test_graph_of_the_app_shows_live_states(ravel, app):
    g = check(json.loads(ravel("graph", app, "--format", "json").stdout), "graph")
    assert g["kind"] == "app" and {v["name"]: (v["state"], v["host"]) for v in g["vms"]} == \
        {"alpha": ("running", "host-1"), "beta": ("running", "host-1")}
    assert [n["ip"] for v in g["vms"] for n in v["nics"]] == ["10.40.0.11/24", "10.40.0.12/24"]
    svg = ET.fromstring(ravel("graph", app).stdout)
    assert {"vm-alpha", "vm-beta", "net-lan", "host-host-1"} <= {e.get("id") for e in svg.iter()}
    assert "running, ready" in ravel("graph", app, "--format", "mermaid").stdout


def test_page_shows_every_vm_in_table_and_topology(browser):
    wait_until(lambda: cell(browser, "alpha", "state") == "running" and cell(browser, "beta", "state") == "running",
               30, "both VMs running in the page")
    for vm in ("alpha", "beta"):
        node = browser.find_element(By.ID, f"vm-{vm}")  # the topology's node (ravel graph's SVG)
        assert vm in node.text
    assert browser.find_element(By.ID, "net-lan")
    assert browser.find_element(By.ID, "live").text == "live"
    shot(browser, "1-topology")


def test_console_panel_shows_prompt_and_command_output(browser):
    click(browser, "alpha", "console")

    def screen() -> str:
        return browser.execute_script(
            "const b = window.ravelTerm && window.ravelTerm.buffer.active; if (!b) return '';"
            "let s = []; for (let i = 0; i < b.length; i++) s.push(b.getLine(i).translateToString(true));"
            "return s.join('\\n');")

    wait_until(lambda: re.search(r"[#$] ?$", screen(), re.M), 30, "the guest's prompt in the console panel")
    browser.find_element(By.CSS_SELECTOR, "#term textarea").send_keys("echo ui-$((6*7))\n")
    wait_until(lambda: re.search(r"^ui-42\s*$", screen(), re.M), 30, "the command's output in the console panel")
    shot(browser, "2-console")


def test_vnc_panel_connects_and_draws(browser):
    click(browser, "alpha", "vnc")
    wait_until(lambda: browser.execute_script("return document.getElementById('panel').dataset.connected") == "1",
               30, "noVNC connected")
    size = wait_until(lambda: browser.execute_script(
        "const c = document.querySelector('#vnc canvas'); return c && c.width > 0 && c.height > 0 ? [c.width, c.height] : null"),
        30, "a VNC canvas with a size")
    assert size[0] >= 320 and size[1] >= 200, size
    # and something is drawn: the guest's screen (QEMU's own text when it has no display device)
    lit = wait_until(lambda: browser.execute_script(
        "const c = document.querySelector('#vnc canvas'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
        "for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 96) n++; return n;"),
        20, "lit pixels on the VNC canvas")
    assert lit > 100, lit
    shot(browser, "3-vnc")


def test_stop_from_the_page_then_start_from_the_cli(browser, ravel, app):
    browser.find_element(By.ID, "panel-close").click()
    click(browser, "beta", "stop")
    wait_until(lambda: cell(browser, "beta", "state") == "stopped", 60, "beta stopped in the page")
    assert browser.find_element(By.ID, "vm-beta").get_attribute("data-state") == "stopped"
    assert ravel.status(app)["beta"]["state"] == "stopped"
    assert cell(browser, "alpha", "state") == "running"
    shot(browser, "4-stopped")
    ravel("start", app, "beta")
    done = time.monotonic()
    wait_until(lambda: cell(browser, "beta", "state") == "running", 10, "beta running in the page")
    lag = time.monotonic() - done
    print(f"the page showed the CLI's start {lag:.1f} s after it returned")
    assert lag <= 3.0, f"the page showed the CLI's start {lag:.1f} s later"
    shot(browser, "5-started")
