"""The default SSH source on clouds: this machine's public address, learned from a "what is my
IP" endpoint. Every test points RAVEL_CHECKIP_URL at a server it starts on 127.0.0.1: the real
endpoint is never asked."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ravel.errors import ProviderError
from ravel.providers import public_address
from ravel.providers.cloud import ssh_from

ROOT = Path(__file__).resolve().parents[2]


class CheckIp:
    """A tiny "what is my IP" endpoint on 127.0.0.1 that answers `body` with `status`."""

    def __init__(self, body: bytes = b"198.51.100.23\n", status: int = 200, delay: float = 0.0) -> None:
        self.body, self.status, self.delay, self.hits = body, status, delay, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                time.sleep(outer.delay)
                try:
                    self.send_response(outer.status)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(outer.body)
                except OSError:
                    pass  # the client gave up first (the timeout test)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True  # closing does not wait for a deliberately slow answer
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def checkip(monkeypatch):
    made: list[CheckIp] = []

    def start(*args, **kwargs) -> CheckIp:
        server = CheckIp(*args, **kwargs)
        made.append(server)
        monkeypatch.setenv("RAVEL_CHECKIP_URL", server.url)
        return server

    monkeypatch.delenv("RAVEL_SSH_FROM", raising=False)
    public_address.forget()
    yield start
    public_address.forget()
    for server in made:
        server.close()


def test_the_default_is_the_learned_address_as_a_host_cidr(checkip):
    server = checkip()
    assert ssh_from(None) == "198.51.100.23/32"
    # asked once per process, even by hosts made in parallel
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: ssh_from(None), range(16))) == {"198.51.100.23/32"}
    assert server.hits == 1


def test_an_ipv6_answer_is_a_128(checkip):
    checkip(b"2001:db8::7\n")
    assert ssh_from(None) == "2001:db8::7/128"


def test_explicit_values_win_and_nothing_is_asked(checkip, monkeypatch):
    server = checkip()
    assert ssh_from("203.0.113.9") == "203.0.113.9/32"
    monkeypatch.setenv("RAVEL_SSH_FROM", "203.0.113.0/24")
    assert ssh_from(None) == "203.0.113.0/24"
    assert ssh_from("0.0.0.0/0") == "0.0.0.0/0"  # the world, only because it was asked for
    assert server.hits == 0


@pytest.mark.parametrize("body, status, why", [
    (b"<html>captive portal</html>", 200, "the answer '<html>captive portal</html>' is not an address"),
    (b"", 200, "the answer '' is not an address"),
    (b"0.0.0.0\n", 200, "is not an address"),
    (b"198.51.100.23\n", 503, "HTTP 503"),
    (b"1" * 4000, 200, "the answer is not an address"),
])
def test_a_bad_answer_is_one_line_naming_the_url_and_ssh_from(checkip, body, status, why):
    server = checkip(body, status)
    with pytest.raises(ProviderError) as exc:
        ssh_from(None)
    msg = exc.value.message
    assert msg.startswith(f"cannot learn this machine's public address from {server.url} (") and why in msg
    assert msg.endswith("pass --ssh-from CIDR (or set RAVEL_SSH_FROM)") and "\n" not in msg


def test_an_endpoint_that_does_not_answer_is_bounded(checkip, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    monkeypatch.setenv("RAVEL_CHECKIP_URL", closed)
    with pytest.raises(ProviderError, match="pass --ssh-from CIDR"):
        ssh_from(None)
    slow = CheckIp(delay=3.0)
    try:
        started = time.monotonic()
        with pytest.raises(ProviderError, match="timed out"):
            public_address.learn(slow.url, timeout=0.5)
        assert time.monotonic() - started < 2.5
    finally:
        slow.close()


def test_a_url_that_is_not_http_is_refused(checkip, monkeypatch):
    monkeypatch.setenv("RAVEL_CHECKIP_URL", "file:///etc/hostname")
    with pytest.raises(ProviderError, match=r"\(not an http\(s\) URL\)"):
        ssh_from(None)


def test_asking_for_the_whole_internet_warns(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAVEL_")}
    env.update(RAVEL_HOME=str(tmp_path), RAVEL_CHECKIP_URL="http://127.0.0.1:9/")
    p = subprocess.run([sys.executable, "-m", "ravel", "publish", str(tmp_path / "none.yaml"), "-p", "aws",
                        "--ssh-from", "0.0.0.0/0"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.splitlines()[0] == ("warning: --ssh-from 0.0.0.0/0 opens SSH (and exposed services without "
                                        "an `allow`) to the whole internet")
