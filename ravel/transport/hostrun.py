"""A host runtime command driven line by line (`ravel-host snapshot`): JSON lines out, words in.

The same conversation runs over two pipes: a local `ip netns exec` process for namespace hosts,
and an SSH channel (`stream`) for every transport that can stream, which is how cloud hosts and
the local provider's SSH mode are reached.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterator

from ..errors import TransportError
from .base import CommandStream
from .hostctl import HostRuntime

FINISH_WAIT_S = 30.0
OPEN_TIMEOUT_S = 60.0


class _Pipe:
    """The line protocol over any transport's stream: text lines out, text in."""

    def __init__(self, stream: CommandStream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        self.stream.sendall(text.encode())

    def lines(self) -> Iterator[str]:
        for line in self.stream.lines():
            yield line.decode(errors="replace")

    def stderr(self) -> str:
        # asked after stdout ended: the rest is on its way
        return self.stream.stderr(FINISH_WAIT_S).decode(errors="replace")

    def finish(self) -> None:
        """End its stdin and wait for it, bounded; then hang up (which ends it if still running).
        The host runtime undoes what it prepared when its stdin ends before "go"."""
        self.stream.shutdown_write()
        self.stream.wait(FINISH_WAIT_S)
        self.stream.close()


def _open(host: str, runtime: HostRuntime, command: str) -> _Pipe:
    # raises TransportError naming the host
    return _Pipe(runtime.t.stream([runtime.python, runtime.pyz, command], timeout=OPEN_TIMEOUT_S))


class HostRun:
    """One host's line-protocol command: the first line sent is a JSON request; every line it
    prints is a JSON document, read by a thread and handed out by index with a bounded wait."""

    def __init__(self, host: str, runtime: HostRuntime, request: dict[str, Any], command: str = "snapshot") -> None:
        self.host = host
        self.pipe = _open(host, runtime, command)
        self.lines: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        try:
            self.pipe.write(json.dumps(request) + "\n")
        except (OSError, EOFError) as exc:
            self.pipe.finish()
            raise TransportError(f"{host}: `ravel-host {command}` would not take its request: {exc}") from None
        self.reader = threading.Thread(target=self._read, daemon=True, name=f"hostrun-{host}")
        self.reader.start()

    def _read(self) -> None:
        try:
            for line in self.pipe.lines():
                try:
                    doc = json.loads(line)
                except ValueError:
                    doc = {"error": f"host runtime said: {line.strip()[:200]}"}
                with self.cond:
                    self.lines.append(doc)
                    self.cond.notify_all()
        except (OSError, EOFError, ValueError):
            pass  # the connection died: reported as the command's end below
        with self.cond:
            self.lines.append({"error": "exited", "_eof": True})
            self.cond.notify_all()

    def received(self) -> int:
        """How many lines have arrived (the end of the command counts as one)."""
        with self.cond:
            return len(self.lines)

    def next(self, index: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.lines) > index, max(deadline - time.monotonic(), 0)):
                return {"error": f"no answer within {timeout:.0f} s"}
            doc = self.lines[index]
        if doc.get("_eof"):
            err = self.pipe.stderr()
            tail = err.strip().splitlines()[-1] if err.strip() else "no output"
            return {"error": f"host runtime exited: {tail}"}
        return doc

    def send(self, word: str) -> None:
        try:
            self.pipe.write(word + "\n")
        except (OSError, EOFError, ValueError):
            pass  # it has exited: its report (or its absence) says why

    def finish(self) -> None:
        self.pipe.finish()
