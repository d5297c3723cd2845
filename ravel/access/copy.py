"""`ravel cp SRC DST`, one side `APP:VM:/path`: files and directory trees between this machine
and a guest, like `docker cp` (a directory copied onto an existing directory lands inside it).

Over SSH through the VM's host, logged in as ravel's guest user with the guest's pinned host key.
A file goes over SFTP under a temporary name that takes the real name only once all of it
arrived; a tree goes as one tar stream into a temporary directory that is moved into place.
Every file's sha256 is compared on both sides before that final move, and on any failure or
interruption the temporary names are removed: a partial file is never left behind.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import signal
import tarfile
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

from .. import keys
from ..errors import RavelError, StateError, TransportError
from ..run.sessions import Context
from ..transport.copying import BLOCK, Digest, pump
from ..transport.ssh import SSHTransport
from .channel import tcp
from .guest import Guest, guest, require_ssh

REMOTE = re.compile(r"^(?P<app>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<vm>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<path>.+)$")
COPY_TIMEOUT_S = 3600.0


class CopyError(RavelError):
    exit_code = 6


@dataclass(frozen=True)
class Where:
    app: str | None  # None: this machine
    vm: str | None
    path: str


def parse(spec: str) -> Where:
    m = REMOTE.match(spec)
    if m and not spec.startswith(("/", ".")):
        return Where(m["app"], m["vm"], m["path"])
    return Where(None, None, spec)


@dataclass(frozen=True)
class Copied:
    files: int
    bytes: int


_stop = threading.Event()


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP (a CI job cancelled, a terminal closed) end a copy through
    its clean-up. The signal only marks the copy stopped; the copy notices between two blocks
    (`check`), where the SSH channel is between packets, so the temporary file can still be
    closed and removed on it (an exception raised mid-packet would leave the guest's sftp-server
    waiting for the rest, and the clean-up waiting on it). A second signal stops at once."""
    def stop(signum: int, frame: object) -> None:
        if _stop.is_set():
            raise KeyboardInterrupt
        _stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _stop.clear()
    saved = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
        check()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        _stop.clear()


def check() -> None:
    if _stop.is_set():
        raise KeyboardInterrupt


def checked(blocks: Iterable[bytes]) -> Iterator[bytes]:
    for block in blocks:
        check()
        yield block


def copy(ctx: Context, src: str, dst: str) -> Copied:
    with interruptible():
        return _copy(ctx, src, dst)


def _copy(ctx: Context, src: str, dst: str) -> Copied:
    a, b = parse(src), parse(dst)
    if (a.app is None) == (b.app is None):
        raise StateError("give one side as APP:VM:/path and the other as a path here",
                         hint="ravel cp ./file lab:web-1:/tmp/   or   ravel cp lab:web-1:/etc/hosts .")
    remote = a if a.app else b
    assert remote.app and remote.vm
    g = guest(ctx, remote.app, remote.vm)
    require_ssh(g)
    t = guest_transport(ctx, g)
    try:
        return download(t, g, a.path, Path(b.path)) if a.app else upload(t, g, Path(a.path), b.path)
    finally:
        t.close()


def guest_transport(ctx: Context, g: Guest) -> SSHTransport:
    """SSH to the guest as ravel's user, the TCP connection made through its host."""
    key_file, _ = keys.user_key(keys.directory(ctx.paths.state))
    assert g.host_key and g.user and g.address
    return SSHTransport(f"VM {g.vm}", g.address, host_key=g.host_key, key_file=key_file, user=g.user,
                        dial=lambda budget: tcp(ctx, g, 22, budget))


def _kind(t: SSHTransport, path: str) -> str:
    """d (directory), f (anything else that is there), n (nothing)."""
    r = t.run(["sh", "-c", 'if [ -d "$1" ]; then echo d; elif [ -e "$1" ] || [ -L "$1" ]; then echo f; else echo n; fi',
               "sh", path])
    return r.stdout.strip() or "n"


def _remote_sums(t: SSHTransport, root: str) -> dict[str, str]:
    """sha256 of every regular file under `root` (a directory), by path relative to it."""
    r = t.run(["sh", "-c", 'cd "$1" && find . -type f -exec sha256sum {} +', "sh", root], timeout=COPY_TIMEOUT_S)
    out = {}
    for line in r.stdout.splitlines():
        digest, _, name = line.partition("  ")
        out[posixpath.normpath(name)] = digest
    return out


# -- this machine -> guest -------------------------------------------------------------------------

def upload(t: SSHTransport, g: Guest, src: Path, dst: str) -> Copied:
    if not src.exists():
        raise CopyError(f"{src}: no such file or directory")
    into = _kind(t, dst) == "d" or dst.endswith("/")
    target = posixpath.join(dst, src.name) if into else dst
    if src.is_dir():
        return _upload_tree(t, g, src, target)
    with src.open("rb") as fh:
        with t.writing(target, mode=src.stat().st_mode & 0o7777) as sink:
            sent = pump(checked(iter(lambda: fh.read(BLOCK), b"")), sink)
    _verify_remote_file(t, g, target, sent)
    return Copied(1, sent.size)


def _verify_remote_file(t: SSHTransport, g: Guest, path: str, sent: Digest) -> None:
    r = t.run(["sha256sum", "--", path], check=False)
    got = r.stdout.split()[0] if r.ok and r.stdout.split() else None
    if got != sent.sha256:
        t.run(["rm", "-f", "--", path], check=False)
        raise CopyError(f"VM {g.vm}: {path} does not match what was sent "
                        f"({'sha256 ' + (got or '?')[:12] if got else r.stderr.strip() or 'no sha256sum'} vs "
                        f"{sent.sha256[:12]}); removed")


class _ToStream(IO[bytes]):
    """tarfile writes here; the bytes go to a command's stdin on the guest."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.stream = stream

    def write(self, data) -> int:  # type: ignore[no-untyped-def,override]
        check()
        self.stream.sendall(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def _upload_tree(t: SSHTransport, g: Guest, src: Path, target: str) -> Copied:
    parent = posixpath.dirname(target.rstrip("/")) or "/"
    tmp = posixpath.join(parent, f".{posixpath.basename(target.rstrip('/'))}.{uuid.uuid4().hex[:8]}.part")
    sums: dict[str, str] = {}
    total = 0
    for path in sorted(src.rglob("*")):
        if path.is_file() and not path.is_symlink():
            d = _digest(path)
            sums[posixpath.normpath(path.relative_to(src).as_posix())] = d.sha256
            total += d.size
    stream = t.stream(["sh", "-c", 'mkdir -p -- "$1" && exec tar -C "$1" -xpf -', "sh", tmp], timeout=60)
    try:
        try:
            with tarfile.open(fileobj=_ToStream(stream), mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(src.iterdir()):
                    tar.add(path, arcname=path.name)
            stream.shutdown_write()
            rc = stream.wait(COPY_TIMEOUT_S)
        except (OSError, EOFError) as exc:
            raise TransportError(f"VM {g.vm}: the copy to {target} broke off: {exc}") from None
        if rc != 0:
            raise CopyError(f"VM {g.vm}: tar could not unpack into {parent}: "
                            f"{stream.stderr(5).decode(errors='replace').strip() or f'exit status {rc}'}")
        got = _remote_sums(t, tmp)
        bad = sorted(k for k in sums if got.get(k) != sums[k])
        if bad or len(got) != len(sums):
            raise CopyError(f"VM {g.vm}: {len(bad) or abs(len(got) - len(sums))} file(s) under {target} do not "
                            f"match what was sent ({', '.join(bad[:3])}); nothing was put in place")
        # in place: a new name takes the tree at once; onto an existing directory it merges
        t.run(["sh", "-c", 'if [ -e "$2" ]; then cp -a -- "$1"/. "$2"/ && rm -rf -- "$1"; else mv -- "$1" "$2"; fi',
               "sh", tmp, target], timeout=COPY_TIMEOUT_S)
    except BaseException:
        stream.close()
        t.run(["rm", "-rf", "--", tmp], check=False, timeout=60)
        raise
    stream.close()
    return Copied(len(sums), total)


def _digest(path: Path) -> Digest:
    with path.open("rb") as fh:
        return pump(iter(lambda: fh.read(BLOCK), b""))


# -- guest -> this machine -------------------------------------------------------------------------

def download(t: SSHTransport, g: Guest, src: str, dst: Path) -> Copied:
    kind = _kind(t, src)
    if kind == "n":
        raise CopyError(f"VM {g.vm}: {src}: no such file or directory")
    name = posixpath.basename(src.rstrip("/")) or "root"
    target = dst / name if dst.is_dir() else dst
    if not target.parent.is_dir():
        raise CopyError(f"{target.parent}: no such directory")
    if kind == "d":
        return _download_tree(t, g, src, target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with t.reading(src) as blocks, open(tmp, "wb") as fh:
            got = pump(checked(blocks), fh)
            mode = blocks.mode
        r = t.run(["sha256sum", "--", src])
        if r.stdout.split()[:1] != [got.sha256]:
            raise CopyError(f"VM {g.vm}: {src} changed while it was copied, or arrived damaged; nothing was kept")
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return Copied(1, got.size)


def _download_tree(t: SSHTransport, g: Guest, src: str, target: Path) -> Copied:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    stream = t.stream(["tar", "-C", src, "-cf", "-", "."], timeout=60)
    try:
        tmp.mkdir(mode=0o700)
        with tarfile.open(fileobj=_FromStream(stream), mode="r|") as tar:
            tar.extractall(tmp, filter=_here)
        rc = stream.wait(COPY_TIMEOUT_S)
        if rc != 0:
            raise CopyError(f"VM {g.vm}: tar could not read {src}: "
                            f"{stream.stderr(5).decode(errors='replace').strip() or f'exit status {rc}'}")
        want = _remote_sums(t, src)
        digests = {posixpath.normpath(p.relative_to(tmp).as_posix()): _digest(p)
                   for p in tmp.rglob("*") if p.is_file() and not p.is_symlink()}
        got = {k: d.sha256 for k, d in digests.items()}
        if want != got:
            bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            raise CopyError(f"VM {g.vm}: {len(bad)} file(s) under {src} changed while copied or arrived damaged "
                            f"({', '.join(bad[:3])}); nothing was kept")
        os.chmod(tmp, _mode_of(t, src))
        if target.exists():
            shutil.copytree(tmp, target, dirs_exist_ok=True, symlinks=True)
        else:
            os.replace(tmp, target)
        return Copied(len(got), sum(d.size for d in digests.values()))
    finally:
        stream.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _here(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tar's safety rules (nothing outside the target), and owned by whoever runs ravel here:
    the guest's user ids mean nothing on this machine."""
    m = tarfile.tar_filter(member, dest)
    return m.replace(uid=None, gid=None, uname=None, gname=None, deep=False) if m is not None else None


def _mode_of(t: SSHTransport, path: str) -> int:
    r = t.run(["stat", "-c", "%a", "--", path], check=False)
    return int(r.stdout.strip() or "755", 8)


class _FromStream(IO[bytes]):
    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.stream = stream
        self.buf = b""

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        check()
        while size < 0 or len(self.buf) < size:
            chunk = self.stream.recv(max(size, 1 << 16) if size > 0 else 1 << 16)
            if not chunk:
                break
            self.buf += chunk
        if size < 0:
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:size], self.buf[size:]
        return out

