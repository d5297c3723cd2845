"""`ravel ui`: the server on 127.0.0.1 (never another address), until Ctrl-C."""

from __future__ import annotations

import socket
from typing import Callable

import uvicorn

from ..errors import StateError
from ..paths import Paths
from .guard import new_token
from .live import Live
from .server import make_app

HOST = "127.0.0.1"


def listen(port: int | None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((HOST, port or 0))
    except OSError as exc:
        s.close()
        raise StateError(f"cannot listen on {HOST}:{port}: {exc.strerror}", hint="choose another --port") from None
    s.listen(64)
    return s


def serve(paths: Paths, port: int | None, on_listening: Callable[[str], None], token: str | None = None) -> None:
    sock = listen(port)
    bound = sock.getsockname()[1]
    token = token or new_token()
    live = Live(paths)
    config = uvicorn.Config(make_app(live, token, bound), log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=2, ws_ping_interval=20)
    server = uvicorn.Server(config)
    on_listening(f"http://{HOST}:{bound}/?token={token}")
    try:
        server.run(sockets=[sock])
    finally:
        live.close()
        sock.close()
