"""A host runtime command driven line by line (`ravel-host snapshot`): JSON lines out, words in.

The same conversation runs over two pipes: a local `ip netns exec` process for namespace hosts,
and an SSH channel (`stream`) for every transport that can stream, which is how cloud hosts and
the local provider's SSH mode are reached.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any, Iterator, Protocol

from ..errors import TransportError
from ..transport.hostctl import HostRuntime
from ..transport.netns import NamespaceTransport

FINISH_WAIT_S = 30.0
OPEN_TIMEOUT_S = 60.0


class _Pipe(Protocol):
    def write(self, text: str) -> None: ...

    def lines(self) -> Iterator[str]:
        """Each line the command prints, until it exits."""

    def stderr(self) -> str: ...

    def finish(self) -> None:
        """Close its stdin and wait for it, bounded; ends it when it does not exit."""


class _ProcessPipe:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)

    def write(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def lines(self) -> Iterator[str]:
        assert self.proc.stdout is not None
        yield from self.proc.stdout

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr else ""

    def finish(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(FINISH_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class _ChannelPipe:
    """An SSH channel (paramiko): stdin, stdout and stderr of the command on the host."""

    def __init__(self, chan: Any) -> None:
        self.chan = chan
        self.out = chan.makefile("rb")
        self.err = chan.makefile_stderr("rb")

    def write(self, text: str) -> None:
        self.chan.sendall(text.encode())

    def lines(self) -> Iterator[str]:
        for line in self.out:
            yield line.decode(errors="replace")

    def stderr(self) -> str:
        self.chan.settimeout(FINISH_WAIT_S)  # asked after stdout ended: the rest is on its way
        try:
            return self.err.read().decode(errors="replace")
        except OSError:
            return ""

    def finish(self) -> None:
        try:
            self.chan.shutdown_write()
        except (OSError, EOFError):
            pass
        # closing the channel hangs up on the command; the host runtime undoes what it
        # prepared when its stdin ends before "go"
        self.chan.status_event.wait(FINISH_WAIT_S)
        self.chan.close()


def _open(host: str, runtime: HostRuntime, command: str) -> _Pipe:
    t = runtime.t
    argv = [runtime.python, runtime.pyz, command]
    if isinstance(t, NamespaceTransport):
        return _ProcessPipe(["ip", "netns", "exec", t.namespace, *argv])
    stream = getattr(t, "stream", None)
    if stream is None:
        raise TransportError(f"{host}: `ravel-host {command}` needs a transport that streams "
                             f"(a local namespace or SSH), not {type(t).__name__}")
    return _ChannelPipe(stream(argv, timeout=OPEN_TIMEOUT_S))  # raises TransportError naming the host


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
