"""`ravel cp --agent`: the same copies as copy.py, through the QEMU guest agent (guest-file-*
to move bytes, guest-exec for sha256sum, mkdir, chmod and the final mv), for guests without
network or SSH. Same rules: temporary names until every checksum matched, removed on failure."""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import uuid
from pathlib import Path
from typing import Sequence

from ..run.sessions import Context
from .agent import FILE_CHUNK, GuestAgent
from .copy import Copied, CopyError, check, interruptible, parse
from .execute import agent_of
from .guest import guest


def copy_by_agent(ctx: Context, src: str, dst: str) -> Copied:
    with interruptible():
        return _copy(ctx, src, dst)


def _copy(ctx: Context, src: str, dst: str) -> Copied:
    a, b = parse(src), parse(dst)
    if (a.app is None) == (b.app is None):
        raise CopyError("give one side as APP:VM:/path and the other as a path here")
    remote = a if a.app else b
    assert remote.app and remote.vm
    with agent_of(ctx, guest(ctx, remote.app, remote.vm)) as ga:
        return _download(ga, a.path, Path(b.path)) if a.app else _upload(ga, Path(a.path), b.path)


def _sh(ga: GuestAgent, script: str, *args: str, timeout: float = 600) -> str:
    done = ga.run(["sh", "-c", script, "sh", *args], None, timeout)
    if done.status != 0:
        raise CopyError(f"VM {ga.vm}: {done.stderr.decode(errors='replace').strip() or f'exit status {done.status}'}")
    return done.stdout.decode(errors="replace")


def _sums(ga: GuestAgent, root: str, files: Sequence[str]) -> dict[str, str]:
    out = {}
    for i in range(0, len(files), 200):
        text = _sh(ga, 'cd "$1" && shift && sha256sum -- "$@"', root, *files[i:i + 200])
        for line in text.splitlines():
            digest, _, name = line.partition("  ")
            out[name] = digest
    return out


def _put(ga: GuestAgent, local: Path, remote: str) -> str:
    h = hashlib.sha256()
    handle = ga.open(remote, "w")
    try:
        with local.open("rb") as fh:
            while chunk := fh.read(FILE_CHUNK):
                check()
                h.update(chunk)
                ga.write(handle, chunk)
    finally:
        ga.close_file(handle)
    return h.hexdigest()


def _upload(ga: GuestAgent, src: Path, dst: str) -> Copied:
    if not src.exists():
        raise CopyError(f"{src}: no such file or directory")
    into = dst.endswith("/") or _sh(ga, '[ -d "$1" ] && echo d || true', dst).strip() == "d"
    target = posixpath.join(dst, src.name) if into else dst
    parent = posixpath.dirname(target.rstrip("/")) or "/"
    tmp = posixpath.join(parent, f".{posixpath.basename(target.rstrip('/'))}.{uuid.uuid4().hex[:8]}.part")
    try:
        if src.is_file():
            sent = _put(ga, src, tmp)
            if _sums(ga, parent, [posixpath.basename(tmp)]).get(posixpath.basename(tmp)) != sent:
                raise CopyError(f"VM {ga.vm}: {target} does not match what was sent; nothing was put in place")
            _sh(ga, 'chmod "$1" "$2" && mv -f -- "$2" "$3"', oct(src.stat().st_mode & 0o7777)[2:], tmp, target)
            return Copied(1, src.stat().st_size)
        dirs = sorted(p for p in src.rglob("*") if p.is_dir() and not p.is_symlink())
        files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
        rel = [p.relative_to(src).as_posix() for p in files]
        _sh(ga, 'mkdir -p -- "$@"', tmp, *(posixpath.join(tmp, p.relative_to(src).as_posix()) for p in dirs))
        sent = {r: _put(ga, p, posixpath.join(tmp, r)) for r, p in zip(rel, files)}
        if _sums(ga, tmp, rel) != sent:
            raise CopyError(f"VM {ga.vm}: files under {target} do not match what was sent; nothing was put in place")
        modes = [a for p in [*files, *dirs] for a in (oct(p.stat().st_mode & 0o7777)[2:],
                                                      posixpath.join(tmp, p.relative_to(src).as_posix()))]
        _sh(ga, 'while [ $# -gt 1 ]; do chmod "$1" "$2" || exit 1; shift 2; done', *modes)
        _sh(ga, 'chmod "$1" "$2" && if [ -e "$3" ]; then cp -a -- "$2"/. "$3"/ && rm -rf -- "$2"; '
                'else mv -- "$2" "$3"; fi', oct(src.stat().st_mode & 0o7777)[2:], tmp, target)
        return Copied(len(files), sum(p.stat().st_size for p in files))
    except BaseException:
        try:
            _sh(ga, 'rm -rf -- "$1"', tmp, timeout=60)
        except Exception:  # the first failure is the one to report
            pass
        raise


def _get(ga: GuestAgent, remote: str, local: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    handle = ga.open(remote, "r")
    try:
        with local.open("wb") as fh:
            while True:
                check()
                data, eof = ga.read(handle)
                h.update(data)
                size += len(data)
                fh.write(data)
                if eof or not data:
                    break
    finally:
        ga.close_file(handle)
    return h.hexdigest(), size


def _download(ga: GuestAgent, src: str, dst: Path) -> Copied:
    listing = _sh(ga, 'cd "$1" 2>/dev/null && find . \\( -type d -o -type f \\) -exec stat -c "%F|%a|%n" {} + '
                      '|| stat -c "%F|%a|%n" -- "$1"', src)
    entries = [line.split("|", 2) for line in listing.splitlines() if line.count("|") >= 2]
    if not entries:
        raise CopyError(f"VM {ga.vm}: {src}: no such file or directory")
    name = posixpath.basename(src.rstrip("/")) or "root"
    target = dst / name if dst.is_dir() else dst
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        if len(entries) == 1 and entries[0][0] != "directory":
            digest, size = _get(ga, src, tmp)
            if _sums(ga, posixpath.dirname(src) or "/", [posixpath.basename(src)]).get(posixpath.basename(src)) != digest:
                raise CopyError(f"VM {ga.vm}: {src} changed while it was copied; nothing was kept")
            os.chmod(tmp, int(entries[0][1], 8))
            os.replace(tmp, target)
            return Copied(1, size)
        tmp.mkdir(mode=0o700)
        files = [posixpath.normpath(n) for kind, _, n in entries if kind != "directory"]
        for kind, _, n in entries:
            if kind == "directory":
                (tmp / n).mkdir(parents=True, exist_ok=True)
        got = {f: _get(ga, posixpath.join(src, f), tmp / f) for f in files}
        if _sums(ga, src, files) != {f: d for f, (d, _) in got.items()}:
            raise CopyError(f"VM {ga.vm}: files under {src} changed while copied; nothing was kept")
        for _, mode, n in sorted(entries, key=lambda e: -len(e[2])):  # deepest first: a 0500 dir last
            os.chmod(tmp / n, int(mode, 8))
        if target.exists():
            shutil.copytree(tmp, target, dirs_exist_ok=True)
        else:
            os.replace(tmp, target)
        return Copied(len(files), sum(s for _, s in got.values()))
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
