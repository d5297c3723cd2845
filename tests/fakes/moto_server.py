"""moto's server (its own WSGI app), with two additions a test or benchmark needs:

- ``--delay S``: every AWS call takes S seconds longer, like a real endpoint far away, so that a
  benchmark can tell concurrent provisioning from sequential (``POST /ravel-fake/delay`` with
  the seconds as body changes it while running);
- ``--log FILE``: one JSON line per AWS call ({"action", "params"}), so a test can assert what
  was *sent* even where moto ignores a parameter (CpuOptions.NestedVirtualization, ClientToken).

It binds 127.0.0.1 on a port the kernel picks and prints ``port N`` once it listens. Tests and
benches start it through ``tests.contract.servers.moto_server``.

    python tests/fakes/moto_server.py [--delay 0.05] [--log calls.jsonl]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl


class Middleware:
    def __init__(self, app: Callable[..., Iterable[bytes]], delay: float, log: str | None) -> None:
        self.app = app
        self.delay = delay
        self.log = open(log, "a", buffering=1) if log else None
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/ravel-fake/delay" and environ.get("REQUEST_METHOD") == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            self.delay = float(environ["wsgi.input"].read(length) or 0)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        if not path.startswith("/moto-api"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length:
                body = environ["wsgi.input"].read(length)
            elif environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
                body = environ["wsgi.input"].read()  # werkzeug has taken the chunking off
            else:
                body = b""
            environ["wsgi.input"] = io.BytesIO(body)
            if self.log is not None:
                params = dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
                if not params and body[:1] == b"{":
                    try:
                        params = json.loads(body)
                    except ValueError:
                        params = {}
                target = environ.get("HTTP_X_AMZ_TARGET", "")
                action = params.get("Action") or target.rsplit(".", 1)[-1] or path
                with self.lock:
                    self.log.write(json.dumps({"t": time.time(), "action": action, "params": params}) + "\n")
            if self.delay:
                time.sleep(self.delay)
        return self.app(environ, start_response)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--log")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = Middleware(DomainDispatcherApplication(create_backend_app), args.delay, args.log)
    server = make_server("127.0.0.1", args.port, app, threaded=True, request_handler=MotoRequestHandler)
    # as moto's own server does: what moto hands out (S3 locations...) names this port
    os.environ.setdefault("MOTO_PORT", str(server.server_address[1]))
    print(f"port {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
