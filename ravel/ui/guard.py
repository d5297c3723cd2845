"""Who may use `ravel ui`: only this machine (the server binds 127.0.0.1), and only who holds the
random token printed with its URL (like Jupyter). The first page load carries `?token=...`; the
answer is a redirect to the same page without it and a cookie (HttpOnly, SameSite=Strict,
named after the port: cookies do not tell ports apart) that later requests, the event stream
and the websockets send. Everything else is 403. The Host header must name 127.0.0.1 or
localhost with the server's port (no DNS rebinding), a websocket's Origin must be this very
server, and so must a POST's Origin when the browser sends one."""

from __future__ import annotations

import hmac
import secrets
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl, urlencode

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOCAL_NAMES = ("127.0.0.1", "localhost")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def cookie_name(port: int) -> str:
    return f"ravel-ui-{port}"


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}


def _same(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


class TokenGuard:
    def __init__(self, app: ASGIApp, token: str, port: int) -> None:
        self.app = app
        self.token = token
        self.port = port

    @property
    def origins(self) -> set[str]:
        return {f"http://{name}:{self.port}" for name in LOCAL_NAMES}

    def _host_ok(self, headers: dict[str, str]) -> bool:
        return headers.get("host") in {f"{name}:{self.port}" for name in LOCAL_NAMES}

    def _cookie(self, headers: dict[str, str]) -> str | None:
        jar = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no token
            return None
        morsel = jar.get(cookie_name(self.port))
        return morsel.value if morsel else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        in_query = query.get("token")
        authorised = _same(self._cookie(headers), self.token) or _same(in_query, self.token)
        if scope["type"] == "websocket":
            if not (authorised and self._host_ok(headers) and headers.get("origin") in self.origins):
                # refused before the handshake: the server answers the upgrade with 403
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        if not (authorised and self._host_ok(headers)):
            await _plain(send, 403, "403: open the URL `ravel ui` printed (it carries the token)\n")
            return
        if scope["method"] not in ("GET", "HEAD") and headers.get("origin", "") not in self.origins | {""}:
            await _plain(send, 403, "403: a request from another origin\n")
            return
        if in_query is not None and scope["method"] == "GET":
            rest = urlencode([(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode()) if k != "token"])
            where = scope["path"] + (f"?{rest}" if rest else "")
            await send({"type": "http.response.start", "status": 303, "headers": [
                (b"location", where.encode()),
                (b"set-cookie", f"{cookie_name(self.port)}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()),
                (b"cache-control", b"no-store"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
