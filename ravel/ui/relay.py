"""A websocket joined to a byte stream: the VM's serial console (the socket `ravel console`
attaches to, reached through the VM's host exactly as `ravel console` and `ravel vnc` reach it)
or its VNC console (a TCP connection to the VM's `ravel vnc` forward on 127.0.0.1). Bytes pass
unchanged both ways; either side closing ends both."""

from __future__ import annotations

import asyncio
import socket
import threading
from contextlib import suppress
from typing import Any, Protocol

from ..access.channel import Link, unix
from ..access.guest import guest, require_running
from ..paths import Paths
from ..run.lab import Lab
from ..run.vm_access import vm_record

CHUNK = 65536


class Stream(Protocol):
    def recv(self, size: int) -> bytes: ...
    def sendall(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class Opened:
    """A stream and what must stay open while it is used (the Lab whose host session carries it)."""

    def __init__(self, stream: Stream, lab: Lab | None = None) -> None:
        self.stream = stream
        self.lab = lab

    def close(self) -> None:
        with suppress(OSError):
            self.stream.close()
        if self.lab is not None:
            self.lab.close()


def open_console(paths: Paths, app: str, vm: str) -> Opened:
    """The VM's serial console: its socket on its host, directly or through the host runtime."""
    lab = Lab(paths)
    try:
        record = vm_record(lab.ctx, app, vm)
        g = guest(lab.ctx, app, vm)
        require_running(g)
        return Opened(unix(lab.ctx, g, record.detail["console"], "serial console"), lab)
    except BaseException:
        lab.close()
        raise


def open_tcp(port: int) -> Opened:
    """A connection to a forward on 127.0.0.1 (the VM's `ravel vnc` forward)."""
    return Opened(Link(socket.create_connection(("127.0.0.1", port), timeout=10)))


async def bridge(ws: Any, opened: Opened) -> None:
    """Pump bytes between a Starlette WebSocket (accepted) and `opened` until either ends."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    stream = opened.stream
    if isinstance(stream, Link):
        stream.settimeout(None)

    def reader() -> None:
        try:
            while True:
                data = stream.recv(CHUNK)
                loop.call_soon_threadsafe(queue.put_nowait, data)
                if not data:
                    return
        except (OSError, EOFError, ValueError):
            loop.call_soon_threadsafe(queue.put_nowait, b"")

    threading.Thread(target=reader, daemon=True, name="ravel-ui-relay").start()

    async def down() -> None:
        while data := await queue.get():
            await ws.send_bytes(data)

    async def up() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes") or (msg.get("text") or "").encode()
            if data:
                await asyncio.to_thread(stream.sendall, data)

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.to_thread(opened.close)
        with suppress(Exception):
            await ws.close()
