"""A host reached over SSH (paramiko), and the one place where an argv becomes a command line.

The host key is pinned: ravel made the host's key itself and installed it through the host's
boot data, so the very first connection is verified. A key that is unknown or different is
refused, never added, and never retried. While a host boots, connecting is retried with
backoff, bounded by the caller's timeout; giving up names the host and what failed. One
connection per transport is kept and reused for every command and file transfer.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import select
import shlex
import socket
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Sequence

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

from ..errors import CommandFailed, HostKeyMismatch, MissingFile, TransportError
from .base import READ_LIMIT, CommandResult, Conn, split_lines
from .copying import BLOCK, Blocks, pump

# paramiko logs handshake failures from its own thread; without a handler Python's last-resort
# handler would print them (tracebacks included) on the user's terminal. Retries report instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

ATTEMPT_S = 10.0  # one try: TCP connect, SSH handshake and login
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 5.0
FILE_TIMEOUT_S = 300.0  # one put or get
SFTP_SESSIONS = 4  # transfers at once per host
# read ahead at most this much of one file: all of a window's requests go out at once (paramiko's
# own cap on requests in flight polls, and runs at a fifth of the speed)
READ_WINDOW = 8 << 20
# One SFTP read or write request. paramiko asks 32 KiB at a time, and its own per-request work
# (not the cipher) is what bounds a transfer here; 255 KiB is what OpenSSH's sftp-server takes
# (its limits@openssh.com answer: 256 KiB messages less 1 KiB), which halves the time per byte.
# A server that answers a read with fewer bytes is still read right: paramiko asks again for
# the rest.
SFTP_REQUEST = 255 << 10
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}


def command_line(argv: Sequence[str]) -> str:
    """argv -> the string the remote shell runs: every argument arrives exactly as given."""
    if not argv:
        raise ValueError("an empty command")
    return shlex.join(str(a) for a in argv)


def public_key(line: str) -> paramiko.PKey:
    """'ssh-ed25519 AAAA... comment' -> the key (ValueError when it is not one)."""
    try:
        entry = HostKeyEntry.from_line(f"pinned {line.strip()}")
    except (InvalidHostKey, paramiko.SSHException, ValueError) as exc:
        raise ValueError(f"not an SSH public key line: {line[:40]!r} ({exc})") from None
    if entry is None:
        raise ValueError(f"not an SSH public key line: {line[:40]!r}")
    return entry.key


class _NotPinned(Exception):
    """The host presented a key of a type ravel holds no pin for."""

    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__(key.get_name())
        self.key = key


class _RefuseUnpinned(paramiko.MissingHostKeyPolicy):
    """Never trust a key on first sight: ravel knows every host key before it connects."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _NotPinned(key)


class _Retry(Exception):
    """One connection attempt failed in a way that may pass while the host boots."""


class ChannelStream:
    """A CommandStream over an SSH channel (paramiko) running the command on the host."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel

    def fileno(self) -> int:
        return self.channel.fileno()

    def recv(self, size: int) -> bytes:
        return self.channel.recv(size)

    def lines(self) -> Iterator[bytes]:
        return split_lines(self.channel.recv)

    def sendall(self, data: bytes) -> None:
        self.channel.sendall(data)

    def shutdown_write(self) -> None:
        try:
            self.channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the command (or the connection) is gone: its exit status says so

    def stderr(self, timeout: float) -> bytes:
        out = bytearray()
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.channel.settimeout(left)
                chunk = self.channel.recv_stderr(1 << 16)
                if not chunk:
                    break
                out += chunk
        except (OSError, EOFError, paramiko.SSHException):  # socket.timeout too
            pass
        finally:
            self.channel.settimeout(None)
        return bytes(out)

    def wait(self, timeout: float) -> int | None:
        if not self.channel.status_event.wait(timeout):
            return None
        return self.channel.exit_status

    def close(self) -> None:
        self.channel.close()  # hangs up on the command


class SSHTransport:
    is_local = False  # paths name files on the host, not on this machine

    def __init__(self, host: str, address: str, *, host_key: str, key_file: str | os.PathLike[str],
                 user: str = "root", port: int = 22, device: str | None = None,
                 dial: Callable[[float], Conn] | None = None) -> None:
        """`host_key`: the pinned public key line; `key_file`: ravel's private login key;
        `device`: bind the connection to this network device (the local provider's underlay
        link), so it can never leave through another interface; `dial`: how the TCP connection
        is made instead (given the seconds it may take): a guest is reached through its host."""
        self.host = host
        self.address = address
        self.port = int(port)
        self.user = user
        self.key_file = Path(key_file)
        self.device = device
        self.dial = dial
        try:
            self._pinned = public_key(host_key)
        except ValueError:
            raise TransportError(f"{host}: the pinned host key is not a public key line") from None
        self._lock = threading.Lock()  # one connection per host
        self._client: paramiko.SSHClient | None = None
        self._sftp_free = threading.Condition()  # guards the two below
        self._sftp_idle: list[tuple[paramiko.SSHClient, paramiko.SFTPClient]] = []
        self._sftp_busy = 0

    @classmethod
    def from_spec(cls, host: str, spec: Mapping[str, Any]) -> SSHTransport:
        """From the dict a provider keeps in Host.extra["ssh"] (and so in the state)."""
        return cls(host, spec["address"], host_key=spec["host_key"], key_file=spec["key_file"],
                   user=spec.get("user", "root"), port=spec.get("port", 22), device=spec.get("device"))

    @property
    def where(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    # -- connection ----------------------------------------------------------------------------
    def _connected(self, deadline: float) -> paramiko.SSHClient:
        with self._lock:
            c = self._client
            if c is not None and c.get_transport() is not None and c.get_transport().is_active():
                return c
            self._drop_locked()
            self._client = self._connect(deadline)
            return self._client

    def _connect(self, deadline: float) -> paramiko.SSHClient:
        try:
            pkey = paramiko.PKey.from_path(self.key_file)
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise TransportError(f"{self.host}: cannot read ravel's login key {self.key_file}: {exc}") from None
        started = time.monotonic()
        attempts, delay, reason = 0, BACKOFF_FIRST_S, "no attempt was made"
        while True:
            attempts += 1
            try:
                return self._attempt(pkey, min(ATTEMPT_S, max(deadline - time.monotonic(), 0.1)))
            except _Retry as exc:
                reason = str(exc)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(
                    f"{self.host}: no SSH connection to {self.where}: {reason} "
                    f"({attempts} attempt{'s' if attempts != 1 else ''} in {time.monotonic() - started:.0f} s)",
                    hint="the host may still be booting, or its sshd is not running; re-running "
                         "continues where this stopped, and `ravel destroy` removes what was made")
            time.sleep(min(delay, left))
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _attempt(self, pkey: paramiko.PKey, budget: float) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_RefuseUnpinned())
        # keyed as paramiko looks it up, so the pin is the only key it will accept
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        client.get_host_keys().add(name, self._pinned.get_name(), self._pinned)
        try:
            sock = self._socket(budget)
            client.connect(self.address, self.port, username=self.user, pkey=pkey, sock=sock,
                           timeout=budget, banner_timeout=budget, auth_timeout=budget,
                           look_for_keys=False, allow_agent=False)
            return client
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise self._mismatch(exc.key) from None
        except _NotPinned as exc:
            client.close()
            raise self._mismatch(exc.key) from None
        except paramiko.AuthenticationException:
            client.close()
            raise _Retry("ravel's login key was not accepted (authentication failed)") from None
        except (paramiko.SSHException, EOFError) as exc:
            client.close()
            raise _Retry(f"SSH handshake failed ({exc or type(exc).__name__})") from None
        except ConnectionRefusedError:
            client.close()
            raise _Retry("connection refused") from None
        except TimeoutError:  # socket.timeout too
            client.close()
            raise _Retry("timed out") from None
        except OSError as exc:
            client.close()
            if exc.errno in _UNREACHABLE:
                raise _Retry("no route to host") from None
            if exc.errno == errno.ECONNRESET:
                raise _Retry("connection reset") from None
            raise TransportError(f"{self.host}: cannot connect to {self.where}: {exc.strerror or exc}") from None

    def _socket(self, budget: float) -> socket.socket | Conn:
        if self.dial is not None:
            try:
                return self.dial(budget)
            except TransportError as exc:  # the way there answered, the guest did not (yet)
                raise _Retry(exc.message) from None
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(self.address, self.port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as exc:
            raise TransportError(f"{self.host}: cannot resolve {self.address}: {exc.strerror}") from None
        sock = socket.socket(family, kind, proto)
        try:
            if self.device:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.device.encode())
                except OSError as exc:
                    raise TransportError(f"{self.host}: cannot use network device {self.device} to reach "
                                         f"{self.address}: {exc.strerror}",
                                         hint="the link to the hosts is gone; re-run `ravel publish`") from None
            sock.settimeout(budget)
            sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        return sock

    def _mismatch(self, presented: paramiko.PKey) -> HostKeyMismatch:
        return HostKeyMismatch(
            f"{self.host}: HOST KEY MISMATCH at {self.where}: ravel installed {self._pinned.get_name()} "
            f"{self._pinned.fingerprint} on this host, it presented {presented.get_name()} "
            f"{presented.fingerprint}; refusing to connect (not retried, nothing was sent)",
            hint="something else answers at that address, or the host was rebuilt outside ravel; "
                 "`ravel destroy` and publish again if the host is really gone")

    def _drop_locked(self) -> None:
        with self._sftp_free:
            idle, self._sftp_idle = self._sftp_idle, []
        for _, sftp in idle:
            try:
                sftp.close()
            except Exception:  # noqa: BLE001 - closing a dead session must not hide anything
                pass
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        with self._lock:
            self._drop_locked()

    # -- commands ------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], input: bytes | None = None, timeout: float = 120,
            check: bool = True) -> CommandResult:
        """Run argv on the host; `timeout` bounds the whole call, connecting included."""
        line = command_line(argv)
        deadline = time.monotonic() + timeout
        chan = self._session(deadline)
        try:
            chan.exec_command(line)
            result = self._collect(chan, input, deadline, argv, timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise TransportError(f"{self.host}: the SSH connection failed during `{line}`: {exc}") from None
        finally:
            chan.close()
        if check and result.rc != 0:
            raise CommandFailed(self.host, list(argv), result.rc, result.stderr)
        return result

    def _session(self, deadline: float) -> paramiko.Channel:
        # a kept connection may have died since its last use (host rebooted): reconnect once
        for tries_left in (1, 0):
            client = self._connected(deadline)
            try:
                return client.get_transport().open_session(timeout=max(deadline - time.monotonic(), 0.1))
            except (paramiko.SSHException, EOFError, OSError) as exc:
                self.close()
                if not tries_left or time.monotonic() >= deadline:
                    raise TransportError(f"{self.host}: cannot open an SSH session on {self.where}: {exc}") from None
        raise AssertionError("unreachable")

    def stream(self, argv: Sequence[str], timeout: float = 60) -> ChannelStream:
        """`argv` running on the host over a channel of the kept connection; `timeout` bounds
        connecting and starting it."""
        chan = self._session(time.monotonic() + timeout)
        try:
            chan.exec_command(command_line(argv))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            chan.close()
            self.close()
            raise TransportError(f"{self.host}: cannot start `{command_line(argv)}` over SSH: {exc}") from None
        return ChannelStream(chan)

    def connect(self, address: str, port: int, timeout: float = 10) -> paramiko.Channel:
        """A `direct-tcpip` channel of the kept connection (what OpenSSH's ProxyJump opens):
        the host's sshd makes the TCP connection to the guest."""
        deadline = time.monotonic() + timeout
        for tries_left in (1, 0):
            client = self._connected(deadline)
            try:
                chan = client.get_transport().open_channel(
                    "direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=max(deadline - time.monotonic(), 0.1))
                chan.settimeout(None)
                return chan
            except paramiko.ChannelException as exc:  # the host answered: the guest did not
                raise TransportError(f"{self.host}: cannot connect to {address}:{port}: {exc.text}") from None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                self.close()
                if not tries_left or time.monotonic() >= deadline:
                    raise TransportError(f"{self.host}: cannot open a channel to {address}:{port} on "
                                         f"{self.where}: {exc}") from None
        raise AssertionError("unreachable")

    def _collect(self, chan: paramiko.Channel, input: bytes | None, deadline: float,
                 argv: Sequence[str], timeout: float) -> CommandResult:
        writer = None
        if input:
            # written from a thread: a command that answers while it reads (cat) must not
            # deadlock against our unread output
            def feed() -> None:
                try:
                    chan.sendall(input)
                    chan.shutdown_write()
                except (OSError, EOFError, paramiko.SSHException):
                    pass  # the command exited without reading everything: its exit status says so

            writer = threading.Thread(target=feed, daemon=True, name=f"ssh-stdin-{self.host}")
            writer.start()
        else:
            chan.shutdown_write()
        out, err = bytearray(), bytearray()
        while True:
            while chan.recv_ready():
                out += chan.recv(1 << 16)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(1 << 16)
            if (chan.eof_received or chan.closed) and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._too_slow(argv, timeout)
            select.select([chan], [], [], min(left, 1.0))
        if not chan.status_event.wait(max(deadline - time.monotonic(), 0.0)):
            raise self._too_slow(argv, timeout)
        if writer is not None:
            writer.join(1.0)
        return CommandResult(chan.exit_status, out.decode(errors="replace"), err.decode(errors="replace"))

    def _too_slow(self, argv: Sequence[str], timeout: float) -> TransportError:
        return TransportError(f"{self.host}: `{' '.join(map(str, argv))}` did not finish within {timeout:.0f} s")

    # -- files ---------------------------------------------------------------------------------
    # paramiko's SFTP client is not thread-safe, so each transfer borrows a session of its own:
    # up to SFTP_SESSIONS per host, all channels of the one SSH connection, so files of one host
    # move in parallel and a host can be read and written at once (a move between two paths of
    # one host) without waiting on itself.
    @contextlib.contextmanager
    def _session_sftp(self) -> Iterator[paramiko.SFTPClient]:
        deadline = time.monotonic() + FILE_TIMEOUT_S
        with self._sftp_free:
            while not self._sftp_idle and self._sftp_busy >= SFTP_SESSIONS:
                if not self._sftp_free.wait(max(deadline - time.monotonic(), 0.0)):
                    raise TransportError(f"{self.host}: no SFTP session came free within {FILE_TIMEOUT_S:.0f} s")
            owner, sftp = self._sftp_idle.pop() if self._sftp_idle else (None, None)
            self._sftp_busy += 1
        client, ok = None, False
        try:
            client = self._connected(deadline)
            if sftp is not None and owner is not client:  # lent by a connection since replaced
                sftp.close()
                sftp = None
            if sftp is None:
                try:
                    sftp = client.open_sftp()
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    raise TransportError(f"{self.host}: no SFTP session on {self.where}: {exc}") from None
                sftp.get_channel().settimeout(FILE_TIMEOUT_S)
            try:
                yield sftp
            except MissingFile:
                ok = True  # a clean answer: the session is as good as before
                raise
            ok = True
        finally:
            with self._sftp_free:
                self._sftp_busy -= 1
                # a session that saw an error may hold unread replies: it is not lent again
                if ok and sftp is not None and self._client is client and not sftp.get_channel().closed:
                    self._sftp_idle.append((client, sftp))
                elif sftp is not None:
                    sftp.close()
                self._sftp_free.notify()

    @contextlib.contextmanager
    def reading(self, remote: str) -> Iterator[Blocks]:
        """The bytes of a file on the host, in blocks, read ahead a window at a time: the
        requests are pipelined, yet a slow consumer never makes this hold more than a window."""
        with self._session_sftp() as sftp:
            try:
                fh = sftp.open(remote, "rb")
            except FileNotFoundError:
                raise MissingFile(f"{self.host}: cannot read {remote}: no such file") from None
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise TransportError(f"{self.host}: cannot read {remote}: {_why(exc)}") from None
            fh.MAX_REQUEST_SIZE = SFTP_REQUEST
            with fh:
                try:
                    st = fh.stat()
                except (OSError, paramiko.SSHException, EOFError) as exc:
                    raise TransportError(f"{self.host}: cannot read {remote}: {_why(exc)}") from None
                size = st.st_size or 0

                def blocks() -> Iterator[bytes]:
                    try:
                        for start in range(0, size, READ_WINDOW):
                            end = min(start + READ_WINDOW, size)
                            # one request's worth each: paramiko joins a larger read piece by piece,
                            # copying all it has so far at every piece
                            pieces = [(o, min(SFTP_REQUEST, end - o)) for o in range(start, end, SFTP_REQUEST)]
                            yield from fh.readv(pieces)
                    except (OSError, paramiko.SSHException, EOFError) as exc:
                        raise TransportError(f"{self.host}: cannot read {remote}: {_why(exc)}") from None

                yield Blocks(blocks(), size, stat.S_IMODE(st.st_mode or 0o600))

    @contextlib.contextmanager
    def writing(self, remote: str, mode: int = 0o644) -> Iterator[BinaryIO]:
        """A file on the host written under a temporary name, pipelined, which takes its real
        name (mode `mode`) only when the block ends without error: readers see the old file or the
        whole new one. On any error the temporary file is removed."""
        parent, base = posixpath.split(remote)
        tmp = f"{parent}/.{base}.{uuid.uuid4().hex[:8]}.part"
        with self._session_sftp() as sftp:
            try:
                self._makedirs(sftp, parent)
                fh = sftp.open(tmp, "wb")
                fh.MAX_REQUEST_SIZE = SFTP_REQUEST
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise TransportError(f"{self.host}: cannot write {remote}: {_why(exc)}") from None
            try:
                try:
                    with fh:
                        fh.set_pipelined(True)  # no round trip per 32 KiB; close collects every ack
                        yield fh
                    sftp.chmod(tmp, mode)
                    sftp.posix_rename(tmp, remote)
                except (OSError, paramiko.SSHException, EOFError) as exc:
                    raise TransportError(f"{self.host}: cannot write {remote}: {_why(exc)}") from None
            except BaseException:
                try:
                    sftp.remove(tmp)
                except (OSError, paramiko.SSHException, EOFError):
                    pass  # the connection is gone: a later put replaces nothing of it, `.part` names say so
                raise

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        """Copy a file to the host, atomically: readers see the old file or the whole new one."""
        try:
            src = open(local, "rb")
        except OSError:
            raise TransportError(f"{self.host}: cannot send {local}: no such file") from None
        with src, self.writing(remote, mode) as dst:
            pump(iter(lambda: src.read(BLOCK), b""), dst)

    def get(self, remote: str, local: Path) -> None:
        """Copy a file from the host, keeping its permission bits; `local` appears whole or not
        at all."""
        local = Path(local)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with self.reading(remote) as blocks:
                try:
                    out = open(tmp, "wb")
                except OSError as exc:
                    raise TransportError(f"{self.host}: cannot copy {remote} to {local}: "
                                         f"{_why(exc)}") from None
                with out:
                    pump(blocks, out)
            os.chmod(tmp, blocks.mode)
            os.replace(tmp, local)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read(self, remote: str, offset: int = 0, limit: int = READ_LIMIT) -> bytes:
        """Bytes of a file on the host, through SFTP: no command line, no decoding."""
        with self._session_sftp() as sftp:
            try:
                with sftp.open(remote, "rb") as fh:
                    fh.seek(offset)
                    return fh.read(limit)
            except FileNotFoundError:
                raise MissingFile(f"{self.host}: cannot read {remote}: no such file") from None
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise TransportError(f"{self.host}: cannot read {remote}: {_why(exc)}") from None

    @staticmethod
    def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
        if path in ("", "/"):
            return
        try:
            if stat.S_ISDIR(sftp.stat(path).st_mode or 0):
                return
        except FileNotFoundError:
            pass
        SSHTransport._makedirs(sftp, posixpath.dirname(path))
        try:
            sftp.mkdir(path, 0o755)
        except OSError:
            # made meanwhile by another transfer (hosts share a parent), or truly impossible
            if not stat.S_ISDIR(sftp.stat(path).st_mode or 0):
                raise


def _why(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file or directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
