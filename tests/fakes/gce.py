"""A small Compute Engine API at the HTTP boundary, for the real google-cloud-compute client.

It keeps networks, firewalls and instances in memory, answers like the v1 REST API (JSON in
camelCase, long-running operations that are RUNNING when returned and DONE a moment later,
`requestId` de-duplication, 404/409 error bodies), serves an OAuth token endpoint for a service
account whose `token_uri` points here, and records every request so tests can assert on exactly
what the client sent. Faults and latency can be injected.

    fake = GceFake().start()      # 127.0.0.1, a port the kernel picks; fake.url
    ...
    fake.stop()
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

TOKEN = "fake-access-token"
PREFIX = "/compute/v1/projects/"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    t: float = field(default_factory=time.monotonic)


@dataclass
class Fault:
    method: str
    pattern: str  # regex on the path
    status: int
    after_apply: bool = False  # the request takes effect, then the answer is lost (a 503)
    times: int = 1


class GceFake:
    def __init__(self, delay: float = 0.0, reject_token: bool = False, op_seconds: float = 0.02) -> None:
        self.delay = delay
        self.op_seconds = op_seconds  # an operation is RUNNING for this long, then DONE
        self.reject_token = reject_token
        self.requests: list[Request] = []
        self.networks: dict[str, dict] = {}
        self.firewalls: dict[str, dict] = {}
        self.instances: dict[tuple[str, str], dict] = {}  # (zone, name)
        self.operations: dict[str, dict] = {}
        self.by_request_id: dict[str, str] = {}  # requestId -> operation name
        self.faults: list[Fault] = []
        self.trusted: dict[str, Any] = {}  # service account email -> RSA public key
        self.lock = threading.RLock()
        self._ids = itertools.count(1000)
        self.server: ThreadingHTTPServer | None = None

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> GceFake:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    status, doc = fake.handle(self.command, self.path, raw, dict(self.headers))
                except Exception as exc:  # a bug in the fake or a request it cannot read: say so
                    status, doc = _error(500, f"fake: {type(exc).__name__}: {exc}", "backendError")
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default 5 makes a 20-host burst wait for SYN retries

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True, name="gce-fake").start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    # -- inspection --------------------------------------------------------------------------------
    def calls(self, method: str | None = None, pattern: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if (method is None or r.method == method) and re.search(pattern, r.path)]

    # -- the API -----------------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        url = urlparse(raw_path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            body = json.loads(raw) if raw and raw[:1] in (b"{", b"[") else raw.decode()
        except ValueError:
            body = raw.decode(errors="replace")
        headers = {k.lower(): v for k, v in headers.items()}
        with self.lock:
            self.requests.append(Request(method, url.path, query, body, headers))
        if self.delay:
            time.sleep(self.delay)
        if url.path == "/token":
            if self.reject_token:
                return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            return 200, {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}
        if not self._authorised(headers.get("authorization", "")):
            return _error(401, "Request had invalid authentication credentials.", "authError")
        fault = self._fault(method, url.path)
        if fault is not None and not fault.after_apply:
            return _error(fault.status, "injected fault", "backendError")
        with self.lock:
            status, doc = self._route(method, url.path, query, body)
        if fault is not None:
            return _error(fault.status, "injected fault after the change was made", "backendError")
        return status, doc

    def trust(self, email: str, public_key: Any) -> None:
        """Accept self-signed JWTs from this service account (what google-auth sends to REST
        APIs instead of asking the token endpoint)."""
        self.trusted[email] = public_key

    def _authorised(self, value: str) -> bool:
        scheme, _, token = value.partition(" ")
        if scheme != "Bearer" or not token:
            return False
        if token == TOKEN:
            return True
        parts = token.split(".")
        if len(parts) != 3:
            return False
        try:
            claims = json.loads(_b64(parts[1]))
            key = self.trusted.get(claims.get("iss", ""))
            if key is None or claims.get("exp", 0) < time.time():
                return False
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import padding

            key.verify(_b64(parts[2]), f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
            return True
        except Exception:  # a malformed or forged token is simply not authorised
            return False

    def _fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.method == method and f.times > 0 and re.search(f.pattern, path):
                    f.times -= 1
                    return f
        return None

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if not path.startswith(PREFIX):
            return _error(404, f"no such path {path}", "notFound")
        project, _, rest = path[len(PREFIX):].partition("/")
        parts = rest.split("/")
        base = f"{PREFIX}{project}"
        if parts[0] == "zones" and len(parts) == 2 and method == "GET":
            return 200, {"kind": "compute#zone", "name": parts[1], "status": "UP", "selfLink": f"{base}/zones/{parts[1]}"}
        if parts[:2] == ["global", "operations"] and len(parts) == 3:
            return self._operation(parts[2])
        if parts[0] == "zones" and len(parts) == 4 and parts[2] == "operations":
            return self._operation(parts[3])
        if parts[:2] == ["global", "networks"]:
            return self._collection(method, base, "global", "networks", self.networks, parts[2:], query, body)
        if parts[:2] == ["global", "firewalls"]:
            return self._collection(method, base, "global", "firewalls", self.firewalls, parts[2:], query, body)
        if parts[0] == "zones" and len(parts) >= 3 and parts[2] == "instances":
            zone = parts[1]
            view = {name: inst for (z, name), inst in self.instances.items() if z == zone}
            if len(parts) == 5 and parts[4] == "start" and method == "POST":
                inst = view.get(parts[3])
                if inst is None:
                    return _error(404, f"instance {parts[3]} not found", "notFound")
                inst["status"] = "RUNNING"
                return 200, self._new_op(base, f"zones/{zone}", "start", inst["selfLink"], query)
            status, doc = self._collection(method, base, f"zones/{zone}", "instances", view, parts[3:], query, body)
            for name in set(view) - {n for (z, n) in self.instances if z == zone}:
                self.instances[(zone, name)] = view[name]
            for (z, name) in [k for k in self.instances if k[0] == zone and k[1] not in view]:
                del self.instances[(z, name)]
            return status, doc
        return _error(404, f"no such path {path}", "notFound")

    def _collection(self, method: str, base: str, scope: str, kind: str, items: dict[str, dict],
                    rest: list[str], query: dict[str, str], body: Any) -> tuple[int, Any]:
        link = f"{base}/{scope}/{kind}"
        if method == "GET" and not rest:
            found = [i for i in items.values() if _matches(i, query.get("filter", ""))]
            return 200, {"kind": f"compute#{kind[:-1]}List", "items": sorted(found, key=lambda i: i["name"])}
        if method == "GET":
            item = items.get(rest[0])
            return (200, item) if item else _error(404, f"The resource '{link}/{rest[0]}' was not found", "notFound")
        if method == "POST" and not rest:
            seen = self._seen(query)
            if seen:
                return 200, seen
            name = body["name"]
            if name in items:
                return _error(409, f"The resource '{link}/{name}' already exists", "alreadyExists")
            item = dict(body, id=str(next(self._ids)), selfLink=f"{link}/{name}",
                        creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%S"))
            if kind == "instances":
                n = len(self.instances) + 2
                item["status"] = "RUNNING"
                for i, nic in enumerate(item.get("networkInterfaces", [])):
                    nic["networkIP"] = f"10.128.{n // 250}.{n % 250 + 2}"
                    for ac in nic.get("accessConfigs", []):
                        ac["natIP"] = f"192.0.2.{n % 250 + 2}"  # TEST-NET-1: never routed
            items[name] = item
            return 200, self._new_op(base, scope, "insert", item["selfLink"], query)
        if method == "PATCH" and rest:
            if rest[0] not in items:
                return _error(404, f"The resource '{link}/{rest[0]}' was not found", "notFound")
            seen = self._seen(query)
            if seen:
                return 200, seen
            items[rest[0]].update(body)
            return 200, self._new_op(base, scope, "patch", items[rest[0]]["selfLink"], query)
        if method == "DELETE" and rest:
            seen = self._seen(query)
            if seen:
                return 200, seen
            if rest[0] not in items:
                return _error(404, f"The resource '{link}/{rest[0]}' was not found", "notFound")
            target = items.pop(rest[0])["selfLink"]
            return 200, self._new_op(base, scope, "delete", target, query)
        return _error(400, f"unsupported {method} on {link}", "badRequest")

    def _seen(self, query: dict[str, str]) -> dict | None:
        rid = query.get("requestId")
        if rid and rid in self.by_request_id:
            return {k: v for k, v in self.operations[self.by_request_id[rid]].items() if not k.startswith("_")}
        return None

    def _new_op(self, base: str, scope: str, kind: str, target: str, query: dict[str, str]) -> dict:
        name = f"operation-{next(self._ids)}"
        op = {"kind": "compute#operation", "id": name[10:], "name": name, "operationType": kind,
              "status": "RUNNING", "targetLink": target, "selfLink": f"{base}/{scope}/operations/{name}",
              "progress": 0}
        if scope.startswith("zones/"):
            op["zone"] = f"{base}/{scope}"
        self.operations[name] = dict(op, _started=time.monotonic())
        if query.get("requestId"):
            self.by_request_id[query["requestId"]] = name
        return op

    def _operation(self, name: str) -> tuple[int, Any]:
        op = self.operations.get(name)
        if op is None:
            return _error(404, f"operation {name} not found", "notFound")
        if time.monotonic() - op["_started"] >= self.op_seconds:
            op.update(status="DONE", progress=100)
        return 200, {k: v for k, v in op.items() if not k.startswith("_")}


def _matches(item: dict, expression: str) -> bool:
    """The filter forms ravel sends: `labels.K = "V"` and `name eq "regex"`, joined by AND."""
    for term in filter(None, (t.strip() for t in re.split(r"\bAND\b", expression))):
        m = re.fullmatch(r"\(?labels\.([\w-]+)\s*=\s*\"?([^\")]*)\"?\)?", term)
        if m:
            if item.get("labels", {}).get(m.group(1)) != m.group(2):
                return False
            continue
        m = re.fullmatch(r"\(?name\s+eq\s+\"?([^\")]*)\"?\)?", term)
        if m:
            if not re.fullmatch(m.group(1), item.get("name", "")):
                return False
            continue
        raise ValueError(f"the fake does not understand the filter term {term!r}")
    return True


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _error(code: int, message: str, reason: str) -> tuple[int, Any]:
    return code, {"error": {"code": code, "message": message, "errors": [{"message": message, "domain": "global",
                                                                          "reason": reason}]}}


def main(argv: list[str] | None = None) -> int:
    """Serve the fake from a process of its own (the benchmark: its CPU must not compete with
    the client's for one interpreter): prints `port N`, serves until killed."""
    import argparse
    import signal
    import sys

    from cryptography.hazmat.primitives import serialization

    parser = argparse.ArgumentParser(description="a fake Compute Engine API on 127.0.0.1")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--trust", action="append", default=[], metavar="EMAIL=PUBLIC_KEY_PEM_FILE")
    args = parser.parse_args(argv)
    fake = GceFake(delay=args.delay)
    for item in args.trust:
        email, _, pem = item.partition("=")
        with open(pem, "rb") as f:
            fake.trust(email, serialization.load_pem_public_key(f.read()))
    fake.start()
    print(f"port {fake.url.rsplit(':', 1)[1]}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    fake.stop()
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
