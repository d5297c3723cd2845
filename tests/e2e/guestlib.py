"""Drive a ravel demo guest through its serial console (stdlib only).

QEMU is started with::

    -chardev socket,id=s0,path=SOCK,server=on,wait=off,logfile=LOG -serial chardev:s0

and the guest image from ``guest/`` prints ``RAVEL-READY <name> <ips>`` on the
serial line when it is up, then keeps a root shell there.

    with Console(sock, log=logfile) as con:
        con.wait_for(r"RAVEL-READY t1 (\\S+)", timeout=30)
        rc, out = con.run("ip -o addr show dev eth0", timeout=10)

Every wait is bounded by a timeout; a timeout raises :class:`ConsoleTimeout`
with the tail of what the guest printed.
"""

from __future__ import annotations

import os
import re
import select
import socket
import time
import uuid

__all__ = ["Console", "ConsoleError", "ConsoleTimeout", "clean"]

# CSI sequences (cursor queries, colours...) and other escapes the shell may print.
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


class ConsoleError(RuntimeError):
    """The console socket failed or closed."""


class ConsoleTimeout(ConsoleError, TimeoutError):
    """A bounded wait on the console ran out."""


def clean(data: bytes) -> str:
    """Bytes from the serial line -> text: no CRs, no terminal escape sequences."""
    data = _ANSI.sub(b"", data).replace(b"\r", b"")
    return data.decode("utf-8", errors="replace")


class Console:
    """A connection to a guest's serial console UNIX socket.

    ``log``: QEMU's ``logfile=`` for the same chardev. QEMU drops serial output
    while no client is connected but still writes it to the log, so anything the
    guest printed before we connected (such as the ready line) is read from there.
    """

    def __init__(self, path: str | os.PathLike, *, log: str | os.PathLike | None = None,
                 connect_timeout: float = 10.0) -> None:
        self.path = os.fspath(path)
        self.log = os.fspath(log) if log is not None else None
        self._buf = bytearray()
        self._pos = 0  # wait_for() searches from here; a match moves it past itself
        self._prepared = False
        self._sock = self._connect(connect_timeout)
        if self.log is not None:
            # Connect first, then read the log: nothing is lost (at worst some
            # bytes are seen twice, which no search below cares about).
            try:
                with open(self.log, "rb") as f:
                    self._buf += f.read()
            except FileNotFoundError:
                pass

    # -- connection ---------------------------------------------------------------------
    def _connect(self, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        last: OSError | None = None
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
                s.setblocking(False)
                return s
            except OSError as e:  # not there yet / QEMU not listening yet
                s.close()
                last = e
            if time.monotonic() >= deadline:
                raise ConsoleTimeout(f"cannot connect to {self.path} within {timeout}s: {last}")
            time.sleep(0.05)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw I/O ------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """Everything received so far, cleaned."""
        return clean(bytes(self._buf))

    def tail(self, n: int = 2000) -> str:
        return clean(bytes(self._buf[-n:]))

    def _read(self, timeout: float) -> bool:
        """Read what is available within ``timeout`` seconds; False on nothing."""
        if self._sock is None:
            raise ConsoleError("console is closed")
        r, _, _ = select.select([self._sock], [], [], max(0.0, timeout))
        if not r:
            return False
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError as e:
            raise ConsoleError(f"console {self.path}: {e}") from e
        if not data:
            self.close()
            raise ConsoleError(f"console {self.path} closed (QEMU exited?); "
                               f"last output:\n{self.tail()}")
        self._buf += data
        return True

    def send(self, data: str | bytes) -> None:
        """Write raw bytes to the guest's serial line (bounded: 10 s)."""
        if self._sock is None:
            raise ConsoleError("console is closed")
        if isinstance(data, str):
            data = data.encode()
        view = memoryview(data)
        deadline = time.monotonic() + 10.0
        while view:
            _, w, _ = select.select([], [self._sock], [], max(0.0, deadline - time.monotonic()))
            if not w:
                raise ConsoleTimeout(f"console {self.path}: write blocked for 10s")
            try:
                n = self._sock.send(view)
            except BlockingIOError:
                continue
            except OSError as e:
                raise ConsoleError(f"console {self.path}: {e}") from e
            view = view[n:]

    def drain(self, quiet: float = 0.0) -> None:
        """Consume what has arrived (waiting up to ``quiet`` s for more) and forget it."""
        while self._read(quiet):
            pass
        self._pos = len(self._buf)

    # -- waiting ------------------------------------------------------------------------
    def wait_for(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait until ``pattern`` (a regex over cleaned text) appears after the last match.

        Returns the match; raises ConsoleTimeout with the recent output otherwise.
        """
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            # Search the cleaned text from _pos; map the end back to a byte offset by
            # cleaning incrementally (cheap: buffers here are small).
            raw = bytes(self._buf[self._pos:])
            m = rx.search(clean(raw))
            if m:
                self._pos += _raw_offset(raw, m.end())
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConsoleTimeout(
                    f"{rx.pattern!r} not seen on {self.path} within {timeout}s; "
                    f"last output:\n{self.tail()}")
            self._read(min(left, 0.5))

    # -- shell --------------------------------------------------------------------------
    def prepare(self, timeout: float = 20.0) -> None:
        """Get a shell prompt in a known state: no echo, a 4000-column terminal.

        With ``-echo`` busybox ash reads plain lines (no line editing, no echo) and the
        width stops long command lines and outputs from wrapping. Retries until the shell
        answers (it may still be starting), bounded by ``timeout``.
        """
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            tag = uuid.uuid4().hex[:12]
            # ^C / ^U abandon any half-typed line; the quotes keep the echoed command
            # (if echo is still on) from matching the marker.
            self.send(b"\x03\x15\n")
            self.send(f"stty cols 4000 rows 1000 -echo; echo RV''SYNC_{tag}\n")
            try:
                # a loaded 2-core machine can take seconds per line under TCG: wait longer
                # each time rather than piling up new lines behind a slow shell
                self.wait_for(rf"RVSYNC_{tag}\n",
                              timeout=min(3.0 * attempt, max(0.1, deadline - time.monotonic())))
                break
            except ConsoleTimeout:
                if time.monotonic() >= deadline:
                    raise
        self.drain(0.2)
        self._prepared = True

    def run(self, cmd: str, timeout: float = 30.0) -> tuple[int, str]:
        """Run a shell command in the guest; return (exit status, output).

        Output is stdout+stderr with CRs and escapes removed and no trailing newline.
        stdin is /dev/null; ``cmd`` may span several lines. Raises ConsoleTimeout if the
        command has not finished within ``timeout`` seconds, after sending ^C so that
        the shell gets back to its prompt for the next command.
        """
        if not self._prepared:
            self.prepare(timeout=max(timeout, 45.0))
        tag = uuid.uuid4().hex[:12]
        self.drain()
        # Output goes between two markers; quotes in the command text keep the
        # markers themselves from appearing if the terminal echoes after all.
        # The command sits on its own line(s) so trailing comments or `&` are safe.
        self.send(f"echo RV''BEGIN_{tag}; {{\n{cmd}\n}} </dev/null 2>&1; "
                  f"echo RV''END_{tag} $?\n")
        deadline = time.monotonic() + timeout
        try:
            self.wait_for(rf"RVBEGIN_{tag}\n", timeout)
            start = self._pos
            m = self.wait_for(rf"RVEND_{tag} (\d+)\n", max(0.0, deadline - time.monotonic()))
        except ConsoleTimeout:
            try:
                self.send(b"\x03")
            except ConsoleError:
                pass
            raise
        out = clean(bytes(self._buf[start:self._pos]))
        # Drop the end-marker line itself.
        out = out[: out.rfind(f"RVEND_{tag}")]
        return int(m.group(1)), out.rstrip("\n")

    def check(self, cmd: str, timeout: float = 30.0) -> str:
        """run(), but raise ConsoleError unless the exit status is 0."""
        rc, out = self.run(cmd, timeout)
        if rc != 0:
            raise ConsoleError(f"guest command failed (rc={rc}): {cmd}\n{out}")
        return out


def _raw_offset(raw: bytes, clean_end: int) -> int:
    """Byte offset in ``raw`` just after the first ``clean_end`` characters of clean(raw)."""
    if clean_end <= 0:
        return 0
    lo, hi = 0, len(raw)
    # Smallest prefix of raw whose cleaned length reaches clean_end.
    while lo < hi:
        mid = (lo + hi) // 2
        if len(clean(raw[:mid])) >= clean_end:
            hi = mid
        else:
            lo = mid + 1
    return lo
