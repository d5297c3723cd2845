"""`ravel cp SRC DST`, one side `APP:VM:/path`: files and directory trees between this machine
and a guest, like `docker cp` (a directory copied onto an existing directory lands inside it).

Over OpenSSH through the VM's host (mux.py), logged in as ravel's guest user with the guest's
pinned host key. A file goes in one SSH session each way (a guest under TCG pays ~0.3 s of CPU
for every session): into the guest under a temporary name that takes the real name only once
its size and checksum match what was sent, out of it followed by its checksum. A tree goes as
one tar stream into a temporary directory that is moved into place once every file's checksum
matches (several commands over one connection). On any failure or interruption the temporary
names are removed: a partial file is never left behind.

The checksum is MD5, on purpose: it guards against a file changed or cut short while it was
copied (SSH's own MAC already guards the bytes in flight), and a guest under TCG hashes 100 MiB
with md5sum in 0.4 s against 1.4 s with sha256sum (measured on the Debian test guest).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import signal
import subprocess
import tarfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from ..errors import RavelError, StateError, TransportError
from ..run.sessions import Context
from .guest import Guest, guest, require_ssh
from .mux import GuestShell, Session, sh

REMOTE = re.compile(r"^(?P<app>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<vm>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<path>.+)$")
COPY_TIMEOUT_S = 3600.0
BLOCK = 1 << 20


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
    or while it waits (`check`), ends the transfer it runs and removes the temporary names over
    the connection, which is still up. A second signal stops at once."""
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
    if a.app:
        return download(ctx, g, a.path, Path(b.path))
    here = Path(a.path)
    if not here.exists():
        raise CopyError(f"{a.path}: no such file or directory")
    if here.is_dir():
        with GuestShell(ctx, g) as shell:
            into = _kind(shell, g, b.path) == "d" or b.path.endswith("/")
            return _upload_tree(shell, g, here, posixpath.join(b.path, here.name) if into else b.path)
    return upload(ctx, g, here, b.path)


def _wait(proc: subprocess.Popen[bytes], timeout: float = COPY_TIMEOUT_S, stoppable: bool = True) -> int:
    """Its exit status, noticing an interruption meanwhile (it is then ended) when `stoppable`."""
    try:
        for _ in range(int(timeout / 0.1) + 1):
            if stoppable:
                check()
            try:
                return proc.wait(0.1)
            except subprocess.TimeoutExpired:
                pass
        raise CopyError(f"the copy did not finish within {timeout:.0f} s")
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def _said(proc: subprocess.Popen[bytes], rc: int) -> str:
    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    return err.splitlines()[-1] if err else f"exit status {rc}"


def _ran(shell: GuestShell, g: Guest, command: list[str], what: str) -> str:
    r = shell.run(command, timeout=COPY_TIMEOUT_S)
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip()
        raise CopyError(f"VM {g.vm}: {what}: {err.splitlines()[-1] if err else f'exit status {r.returncode}'}")
    return r.stdout.decode(errors="replace")


def _kind(shell: GuestShell, g: Guest, path: str) -> str:
    """d (directory), f (anything else that is there), n (nothing)."""
    return _ran(shell, g, sh('if [ -d "$1" ]; then echo d; elif [ -e "$1" ] || [ -L "$1" ]; then echo f; '
                             'else echo n; fi', path), f"cannot look at {path}").strip() or "n"


def _remote_sums(shell: GuestShell, g: Guest, root: str) -> dict[str, str]:
    """MD5 of every regular file under `root` (a directory), by path relative to it."""
    out = {}
    for line in _ran(shell, g, sh('cd "$1" && find . -type f -exec md5sum {} +', root),
                     f"cannot read {root}").splitlines():
        digest, _, name = line.partition("  ")
        out[posixpath.normpath(name)] = digest
    return out


@dataclass(frozen=True)
class Digest:
    md5: str
    size: int


def _digest(path: Path, given_up: threading.Event | None = None) -> Digest:
    h, size = hashlib.md5(usedforsecurity=False), 0
    try:
        with path.open("rb") as fh:
            while block := fh.read(BLOCK):
                check()
                if given_up is not None and given_up.is_set():
                    raise KeyboardInterrupt
                h.update(block)
                size += len(block)
    except OSError as exc:  # unreadable here: said as the copy's error, not a traceback
        raise CopyError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    return Digest(h.hexdigest(), size)


# -- this machine -> guest -------------------------------------------------------------------------

# In the guest, one session does a file's whole upload: DST ($1) an existing directory takes the
# file as NAME ($2) inside it; the first line on stdin is what is sent (MD5, size, mode), the rest
# the file. It goes to a temporary name (TAG, $3) that takes the real name only if as many bytes
# arrived as were sent and its MD5 is what was sent, else it is removed: also when the bytes stop
# short because ravel was interrupted (it closes stdin early) or its connection went. The file's
# room is taken first (fallocate, where the guest has it and its file system can): a full disk is
# said before the bytes are sent, and writing into blocks already allocated cost the Debian test
# guest ~0.3-0.5 s less per 100 MiB than growing a new file. The file then has its full length
# before the bytes are in (a short copy of a file ending in zeros would still match its MD5), so
# the bytes that arrived are counted: cat writes through the script's own descriptor 3, whose
# offset /proc/$$/fdinfo/3 tells (without /proc there is no fallocate, and the file's length is
# what arrived). Every program started costs a guest under TCG ~0.1 s, so the script starts few:
# fallocate, cat, md5sum and mv (chmod only for a mode that the file cannot be created with: one
# with x or special bits; the others come from the umask).
RECEIVE = r"""
dst=$1
if [ -d "$dst" ]; then dst=${dst%/}/$2
elif [ "${dst%/}" != "$dst" ]; then echo "$dst: no such directory" >&2; exit 4
fi
if [ -d "$dst" ]; then echo "$dst: is a directory" >&2; exit 4; fi
case $dst in */*) dir=${dst%/*}/ ;; *) dir= ;; esac
tmp=$dir.${dst##*/}.$3.part
trap '[ ! -e "$tmp" ] || rm -f -- "$tmp"' EXIT
trap 'exit 1' HUP INT TERM PIPE
read -r md5 size mode || exit 5
if [ $((0$mode & 07111)) -eq 0 ]; then umask "$(printf %o $((0777 & ~0$mode)))"; mode=; else umask 077; fi
fdinfo=/proc/$$/fdinfo/3
[ -r /proc/$$/fdinfo/0 ] || fdinfo=
if [ -n "$fdinfo" ] && [ "$size" -gt 0 ] && ! err=$(fallocate -l "$size" -- "$tmp" 2>&1); then
  case $err in *"No space"*|*"too large"*) echo "$err" >&2; exit 4 ;; esac
fi
exec 3<> "$tmp" || exit 4
cat >&3 || exit 4
n=$size
if [ -n "$fdinfo" ]; then while read -r k v; do [ "$k" != pos: ] || n=$v; done < "$fdinfo"; fi
exec 3>&-
got=$(md5sum < "$tmp") || exit 4
if [ "$n" != "$size" ] || [ "${got%% *}" != "$md5" ]; then
  echo "got $n bytes, md5 ${got%% *}" >&2; exit 3
fi
if [ -n "$mode" ]; then chmod "$mode" -- "$tmp" || exit 4; fi
mv -f -- "$tmp" "$dst" || exit 4
"""
CLEAN_UP_S = 30.0


def upload(ctx: Context, g: Guest, src: Path, dst: str) -> Copied:
    """A file here to `dst` in the guest, over one SSH session (no second round trip: under
    TCG every session costs the guest ~0.3 s of CPU)."""
    with ThreadPoolExecutor(1) as pool:
        given_up = threading.Event()
        digest = pool.submit(_digest, src, given_up)  # read here while the SSH handshake goes on
        s: Session | None = None
        try:
            s = Session(ctx, g, sh(RECEIVE, dst, src.name, uuid.uuid4().hex[:8]), stdout=subprocess.DEVNULL)
            sent = digest.result()
            _feed(s, src, f"{sent.md5} {sent.size} {src.stat().st_mode & 0o7777:o}\n".encode(), sent.size)
            # interrupted: a bounded wait while the guest removes what had arrived
            _wait(s.proc, CLEAN_UP_S if _stop.is_set() else COPY_TIMEOUT_S, stoppable=not _stop.is_set())
            rc = s.ended()
        except BaseException:
            given_up.set()
            if s is not None:
                s.kill()
            raise
    check()  # interrupted: the guest has removed what had arrived
    target = dst if not dst.endswith("/") else posixpath.join(dst, src.name)
    if rc == 3:
        raise CopyError(f"VM {g.vm}: what arrived for {target} ({s.said()}) is not what was sent ({sent.size} bytes, "
                        f"md5 {sent.md5}: {src} changed meanwhile?); removed")
    if rc != 0:
        raise CopyError(f"VM {g.vm}: cannot write {target}: {s.said()}")
    return Copied(1, sent.size)


def _feed(s: Session, src: Path, head: bytes, size: int) -> None:
    """The header line, then `size` bytes of `src`, into the session; stops early (closing its
    stdin) once interrupted, or once the guest stops reading (its exit status says why)."""
    out = s.proc.stdin
    assert out is not None
    try:
        out.write(head)
        with src.open("rb") as fh:
            while size > 0 and not _stop.is_set():
                block = fh.read(min(BLOCK, size))
                if not block:
                    break
                out.write(block)
                size -= len(block)
    except BrokenPipeError:
        pass
    finally:
        try:
            out.close()
        except BrokenPipeError:
            pass


def _upload_tree(shell: GuestShell, g: Guest, src: Path, target: str) -> Copied:
    parent = posixpath.dirname(target.rstrip("/")) or "/"
    tmp = posixpath.join(parent, f".{posixpath.basename(target.rstrip('/'))}.{uuid.uuid4().hex[:8]}.part")
    sums: dict[str, str] = {}
    total = 0
    for path in sorted(src.rglob("*")):
        if path.is_file() and not path.is_symlink():
            d = _digest(path)
            sums[posixpath.normpath(path.relative_to(src).as_posix())] = d.md5
            total += d.size
    proc = shell.popen(sh('mkdir -p -- "$1" && exec tar -C "$1" -xpf -', tmp), stdin=subprocess.PIPE,
                       stdout=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None
        try:
            with tarfile.open(fileobj=_Checked(proc.stdin), mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(src.iterdir()):
                    tar.add(path, arcname=path.name)
            proc.stdin.close()
        except OSError as exc:
            raise TransportError(f"VM {g.vm}: the copy to {target} broke off: {exc}") from None
        rc = _wait(proc)
        if rc != 0:
            raise CopyError(f"VM {g.vm}: tar could not unpack into {parent}: {_said(proc, rc)}")
        got = _remote_sums(shell, g, tmp)
        bad = sorted(k for k in sums if got.get(k) != sums[k])
        if bad or len(got) != len(sums):
            raise CopyError(f"VM {g.vm}: {len(bad) or abs(len(got) - len(sums))} file(s) under {target} do not "
                            f"match what was sent ({', '.join(bad[:3])}); nothing was put in place")
        # in place: a new name takes the tree at once; onto an existing directory it merges
        _ran(shell, g, sh('if [ -e "$2" ]; then cp -a -- "$1"/. "$2"/ && rm -rf -- "$1"; else mv -- "$1" "$2"; fi',
                          tmp, target), f"cannot put {target} in place")
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shell.run(["rm", "-rf", "--", tmp], timeout=60)
        raise
    return Copied(len(sums), total)


class _Checked(IO[bytes]):
    """tarfile writes here; the bytes go to a command's stdin, an interruption is noticed."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out

    def write(self, data) -> int:  # type: ignore[no-untyped-def,override]
        check()
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        pass


# -- guest -> this machine -------------------------------------------------------------------------

# In the guest, one session sends a file ($1) on stdout, then its MD5, size and mode on stderr's
# last line; a directory is said by exit status 20 (it goes as a tree, over a GuestShell).
SEND = r"""
[ -d "$1" ] && exit 20
[ -e "$1" ] || { echo "$1: no such file or directory" >&2; exit 21; }
cat -- "$1" || exit 4
sum=$(md5sum < "$1") && st=$(stat -c '%s %a' -- "$1") || exit 4
echo "ravel-sum ${sum%% *} $st" >&2
"""
DIRECTORY = 20


def download(ctx: Context, g: Guest, src: str, dst: Path) -> Copied:
    name = posixpath.basename(src.rstrip("/")) or "root"
    target = dst / name if dst.is_dir() else dst
    if not target.parent.is_dir():
        raise CopyError(f"{target.parent}: no such directory")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        s = Session(ctx, g, sh(SEND, src), stdin=subprocess.DEVNULL)
        try:
            h, size = hashlib.md5(usedforsecurity=False), 0
            assert s.proc.stdout is not None
            with open(tmp, "wb") as fh:
                while block := s.proc.stdout.read1(BLOCK):
                    check()
                    fh.write(block)
                    h.update(block)
                    size += len(block)
            _wait(s.proc)
            rc = s.ended()
        except BaseException:
            s.kill()
            raise
        if rc == DIRECTORY:
            tmp.unlink()
            with GuestShell(ctx, g) as shell:
                return _download_tree(shell, g, src, target)
        if rc != 0:
            raise CopyError(f"VM {g.vm}: cannot read {src}: {s.said()}")
        said = s.said().split()
        if len(said) != 4 or said[0] != "ravel-sum":
            raise CopyError(f"VM {g.vm}: cannot read {src}: {s.said()}")
        if (h.hexdigest(), size) != (said[1], int(said[2])):
            raise CopyError(f"VM {g.vm}: {src} changed while it was copied, or arrived damaged; nothing was kept")
        os.chmod(tmp, int(said[3], 8))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return Copied(1, size)


def _download_tree(shell: GuestShell, g: Guest, src: str, target: Path) -> Copied:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    proc = shell.popen(["tar", "-C", src, "-cf", "-", "."])
    try:
        tmp.mkdir(mode=0o700)
        assert proc.stdout is not None
        with tarfile.open(fileobj=_FromStream(proc.stdout), mode="r|") as tar:
            tar.extractall(tmp, filter=_here)
        rc = _wait(proc)
        if rc != 0:
            raise CopyError(f"VM {g.vm}: tar could not read {src}: {_said(proc, rc)}")
        want = _remote_sums(shell, g, src)
        digests = {posixpath.normpath(p.relative_to(tmp).as_posix()): _digest(p)
                   for p in tmp.rglob("*") if p.is_file() and not p.is_symlink()}
        got = {k: d.md5 for k, d in digests.items()}
        if want != got:
            bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            raise CopyError(f"VM {g.vm}: {len(bad)} file(s) under {src} changed while copied or arrived damaged "
                            f"({', '.join(bad[:3])}); nothing was kept")
        os.chmod(tmp, int(_ran(shell, g, ["stat", "-c", "%a", "--", src], f"cannot read {src}").strip() or "755", 8))
        if target.exists():
            shutil.copytree(tmp, target, dirs_exist_ok=True, symlinks=True)
        else:
            os.replace(tmp, target)
        return Copied(len(got), sum(d.size for d in digests.values()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _here(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tar's safety rules (nothing outside the target), and owned by whoever runs ravel here:
    the guest's user ids mean nothing on this machine."""
    m = tarfile.tar_filter(member, dest)
    return m.replace(uid=None, gid=None, uname=None, gname=None, deep=False) if m is not None else None


class _FromStream(IO[bytes]):
    """tarfile reads a command's stdout here; an interruption is noticed."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        check()
        return self.stream.read(size)
