"""This machine's public address, as the world sees it: the default source for SSH (and exposed
services) on cloud hosts, so ports are never opened to everyone unless the user asks.

Learned once per process from a plain HTTPS "what is my IP" endpoint (AWS's
checkip.amazonaws.com answers with the address and a newline), bounded by a timeout; the URL
is overridable with RAVEL_CHECKIP_URL (a proxy's own endpoint, or a test server). Anything but a
valid address is an error that tells the user to pass --ssh-from: never a silent 0.0.0.0/0.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import urllib.error
import urllib.request

from ..errors import ProviderError

DEFAULT_URL = "https://checkip.amazonaws.com/"
URL_ENV = "RAVEL_CHECKIP_URL"
TIMEOUT_S = 5.0
MAX_BYTES = 256  # an address and a newline; anything longer is not an answer

_lock = threading.Lock()
_learned: dict[str, str | ProviderError] = {}  # URL -> CIDR, or the error it gave


def checkip_url() -> str:
    return (os.environ.get(URL_ENV) or DEFAULT_URL).strip()


def parse_answer(body: bytes) -> str:
    """The endpoint's body -> a host CIDR (/32 or /128); ValueError if it is not an address."""
    text = body.decode("ascii", errors="replace").strip()
    addr = ipaddress.ip_address(text)  # ValueError on anything else (HTML, an empty body...)
    if addr.is_unspecified or addr.is_multicast:
        raise ValueError(f"{text} is not a host address")
    return f"{addr}/{addr.max_prefixlen}"


def learn(url: str | None = None, timeout: float = TIMEOUT_S) -> str:
    """This machine's public address as a host CIDR. Asked once per URL and process (hosts are
    made in parallel: they wait for the first to ask); raises ProviderError when it cannot be
    learned."""
    url = url or checkip_url()
    with _lock:
        if url not in _learned:
            _learned[url] = _ask(url, timeout)
        got = _learned[url]
    if isinstance(got, ProviderError):
        raise ProviderError(got.message, hint=got.hint)  # a fresh one per caller (threads)
    return got


def _ask(url: str, timeout: float) -> str | ProviderError:
    def failed(why: str) -> ProviderError:
        return ProviderError(f"cannot learn this machine's public address from {url} ({why}); "
                             "pass --ssh-from CIDR (or set RAVEL_SSH_FROM)",
                             hint=f"e.g. --ssh-from 203.0.113.7/32, or point {URL_ENV} at an endpoint "
                                  "that answers with your address")

    if not url.startswith(("https://", "http://")):
        return failed("not an http(s) URL")
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "ravel"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        return failed(f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return failed(str(reason).strip() or type(exc).__name__)
    if len(body) > MAX_BYTES:
        return failed("the answer is not an address")
    try:
        return parse_answer(body)
    except ValueError:
        return failed(f"the answer {body[:40].decode('ascii', errors='replace').strip()!r} is not an address")


def forget() -> None:
    """Ask again next time (tests)."""
    with _lock:
        _learned.clear()
