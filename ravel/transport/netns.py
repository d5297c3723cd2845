"""A host that is a network namespace on this machine: commands run under `ip netns exec`."""

from __future__ import annotations

import os
import socket
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import CommandFailed, MissingFile, TransportError
from .base import READ_LIMIT, CommandResult, split_lines
from .enter import NETNS_DIR, netns_socket

END_WAIT_S = 5.0  # a hung-up command is given this long to go after SIGTERM, then SIGKILL


class ProcessStream:
    """A CommandStream over a process's pipes here (`ip netns exec NS argv` execs argv: the
    process is the command itself). Its stderr is drained by a thread, so a command that writes
    much of it never blocks on a full pipe while stdout is being read."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self._err = bytearray()
        self._err_lock = threading.Lock()
        self._err_reader = threading.Thread(target=self._drain_stderr, daemon=True, name=f"stderr-{name}")
        self._err_reader.start()
        self._closed = False

    def _drain_stderr(self) -> None:
        fd = self.proc.stderr.fileno()  # type: ignore[union-attr]
        try:
            while chunk := os.read(fd, 1 << 16):
                with self._err_lock:
                    self._err += chunk
        except OSError:
            pass

    def fileno(self) -> int:
        return self.proc.stdout.fileno()  # type: ignore[union-attr]

    def recv(self, size: int) -> bytes:
        # one read() of the unbuffered pipe: what select() saw is all there is, nothing is kept
        # back in a buffer here (ValueError once closed, never a read of a reused descriptor)
        return self.proc.stdout.read(size) or b""  # type: ignore[union-attr]

    def lines(self) -> Iterator[bytes]:
        return split_lines(self.recv)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = self.proc.stdin.write(view)  # type: ignore[union-attr]
            view = view[sent or 0:]

    def shutdown_write(self) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass  # it has exited without reading all: its exit status says so

    def stderr(self, timeout: float) -> bytes:
        self._err_reader.join(timeout)
        with self._err_lock:
            return bytes(self._err)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.shutdown_write()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(END_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(END_WAIT_S)
        self.proc.stdout.close()  # type: ignore[union-attr]
        # the stderr pipe ends with the command (unless a child it left behind holds it open)
        self._err_reader.join(END_WAIT_S)
        if not self._err_reader.is_alive():
            self.proc.stderr.close()  # type: ignore[union-attr]


class NamespaceTransport:
    is_local = True  # the namespace shares this machine's filesystem

    def __init__(self, host: str, namespace: str) -> None:
        self.host = host
        self.namespace = namespace

    def run(self, argv: Sequence[str], input: bytes | None = None, timeout: float = 120,
            check: bool = True) -> CommandResult:
        if not argv:
            raise ValueError("an empty command")
        full = ["ip", "netns", "exec", self.namespace, *map(str, argv)]
        try:
            proc = subprocess.run(full, input=input, capture_output=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL if input is None else None)
        except subprocess.TimeoutExpired:
            raise TransportError(f"{self.host}: `{' '.join(map(str, argv))}` did not finish within {timeout:.0f} s") from None
        except FileNotFoundError:
            raise TransportError(f"{self.host}: the `ip` command is missing (install iproute2)") from None
        result = CommandResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
        if proc.returncode != 0 and "Cannot open network namespace" in result.stderr:
            raise TransportError(f"{self.host}: network namespace {self.namespace} does not exist")
        if check and proc.returncode != 0:
            raise CommandFailed(self.host, list(map(str, argv)), proc.returncode, result.stderr)
        return result

    def stream(self, argv: Sequence[str], timeout: float = 60) -> ProcessStream:
        """argv as a process here inside the namespace, its pipes connected (`timeout` is not
        needed: starting a process does not wait on anything)."""
        if not argv:
            raise ValueError("an empty command")
        if not os.path.exists(os.path.join(NETNS_DIR, self.namespace)):
            raise TransportError(f"{self.host}: network namespace {self.namespace} does not exist")
        full = ["ip", "netns", "exec", self.namespace, *map(str, argv)]
        try:
            proc = subprocess.Popen(full, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, bufsize=0)
        except FileNotFoundError:
            raise TransportError(f"{self.host}: the `ip` command is missing (install iproute2)") from None
        return ProcessStream(proc, self.host)

    # The namespace shares this machine's filesystem: a copy is all a transfer needs. It goes
    # through a temporary name, so hosts sharing a file never read half of it.
    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        dest = Path(remote)
        if Path(local).resolve() == dest.resolve():
            dest.chmod(mode)
            return
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, tmp)
            tmp.chmod(mode)
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TransportError(f"{self.host}: cannot write {remote}: {exc.strerror or exc}") from None

    def get(self, remote: str, local: Path) -> None:
        if Path(remote).resolve() == Path(local).resolve():
            return
        try:
            shutil.copy(remote, local)  # keeps the permission bits
        except OSError as exc:
            raise TransportError(f"{self.host}: cannot read {remote}: {exc.strerror or exc}") from None

    def read(self, remote: str, offset: int = 0, limit: int = READ_LIMIT) -> bytes:
        try:
            with open(remote, "rb") as fh:
                fh.seek(offset)
                return fh.read(limit)
        except FileNotFoundError:
            raise MissingFile(f"{self.host}: cannot read {remote}: no such file") from None
        except OSError as exc:
            raise TransportError(f"{self.host}: cannot read {remote}: {exc.strerror or exc}") from None

    def connect(self, address: str, port: int, timeout: float = 10) -> socket.socket:
        """A socket made inside the namespace (a thread enters it for the `connect` and ends:
        a socket keeps the namespace it was made in), so the bytes flow with no relay."""
        return netns_socket(self.host, self.namespace, address, port, timeout)

    def close(self) -> None:
        return None
