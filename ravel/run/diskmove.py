"""Carrying a stopped VM's disk from one host to another, when a re-plan puts the VM elsewhere.

Hosts that share this machine's files (their transports are `local`) need a rename only. Every
other host (SSH, cloud) gets the bytes through this machine, over the two hosts' transports:
each file streams from the source to the target under a temporary name (nothing is written
here), and its sha256 is compared on the source, here (of the bytes that passed) and on the
target before it takes its real name; the source's copy is removed only after that. The
temporary file is removed whatever happens.

A disk is a qcow2 chain: the disk itself over the VM's own frozen layers (left by snapshots, in
`layers/` next to the disk) over a base image. The VM's own files move with it, and a file whose
backing file lands on another path on the target is rebased onto it; a base image the target
lacks is copied (the source keeps it: other VMs may use it).

Resumable: the disk takes its name on the target last, so a target holding the disk holds the
verified chain, and a re-run only finishes removing the source's copy.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..errors import CommandFailed, StateError, TransportError
from ..transport.base import Streaming, Transport
from ..transport.copying import pump

COMMAND_S = 60.0  # one small command on a host (test, mkdir, mv, rm, qemu-img)
HASH_S = 900.0  # sha256 of one file on a host: a large disk is read whole


@dataclass(frozen=True)
class Step:
    """One file of a disk's chain to carry."""

    src: str  # on the source host
    dst: str  # on the target host
    own: bool  # the VM's own (the disk, its layers): moves; else a shared base: copied when missing
    backing: str | None = None  # rebase the target's copy onto this file (its backing moved)
    backing_format: str | None = None


@dataclass
class Moved:
    """What a move did, for the user: files carried over the transports and their bytes."""

    files: int = 0
    bytes: int = 0
    renamed: bool = False  # hosts that share this machine's files: a rename, nothing was sent
    finished: bool = False  # an earlier, interrupted move had already placed the disk

    @classmethod
    def total(cls, moves: Sequence[Moved]) -> Moved:
        """A VM's disks together."""
        return cls(sum(m.files for m in moves), sum(m.bytes for m in moves),
                   any(m.renamed for m in moves), any(m.finished for m in moves) and not any(m.files for m in moves))

    def describe(self) -> str:
        if self.renamed:
            return "renamed in place (the hosts share this machine's files)"
        if self.finished:
            return "already on the target; the source's copy removed"
        if not self.files:
            return "nothing to carry"
        return (f"{self.files} file{'s' if self.files != 1 else ''}, {_mib(self.bytes)} sent over the hosts' "
                "transports, sha256 verified on both ends")


def plan_move(chain: Sequence[Mapping[str, Any]], src: str, dst: str) -> list[Step]:
    """Pure: `qemu-img info --backing-chain --output=json` of disk `src` (top first) -> the files
    to carry so that `dst` on the target is the same disk, base first and the disk itself last.
    The disk and its own frozen layers (`layers/<disk stem>.<tag>.qcow2` next to it, as the host
    runtime's snapshots name them) are the VM's and keep their place relative to the disk;
    anything else (a base image, whoever else may use it) keeps its path and is never removed."""
    if not chain:
        raise ValueError("an empty backing chain")
    src_dir, dst_dir = posixpath.dirname(src), posixpath.dirname(dst)
    stem = posixpath.basename(src).removesuffix(".qcow2")

    def own(path: str) -> bool:
        return path == src or (posixpath.dirname(path) == posixpath.join(src_dir, "layers")
                               and posixpath.basename(path).startswith(stem + "."))

    def where(path: str) -> str:
        if path == src:
            return dst
        return posixpath.join(dst_dir, posixpath.relpath(path, src_dir)) if own(path) else path

    paths = [src] + [str(img["filename"]) for img in chain[1:]]
    steps = []
    for i, img in enumerate(chain):
        backing = fmt = None
        if i + 1 < len(chain):
            stored = str(img.get("backing-filename") or paths[i + 1])
            # a relative backing name resolves from wherever the file is
            lands = stored if posixpath.isabs(stored) else posixpath.normpath(
                posixpath.join(posixpath.dirname(where(paths[i])), stored))
            if lands != where(paths[i + 1]):
                backing = where(paths[i + 1])
                fmt = str(chain[i + 1].get("format") or "qcow2")
        steps.append(Step(paths[i], where(paths[i]), own(paths[i]), backing, fmt))
    return steps[::-1]


def move_disk(src_t: Transport, src: str, dst_t: Transport, dst: str,
              deadline: float | None = None, note: Callable[[str], None] = lambda _: None) -> Moved:
    """Make the stopped VM's disk `src` on `src_t`'s host be `dst` on `dst_t`'s host, and remove
    the source's copy; nothing when neither exists (a disk never made)."""
    if src_t.is_local and dst_t.is_local:
        # the same files on both sides: a rename is the whole transfer
        if os.path.exists(src) and not os.path.exists(dst):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(src, dst)
            return Moved(renamed=True)
        return Moved()
    for t in (src_t, dst_t):
        if not isinstance(t, Streaming):
            raise TransportError(f"{t.host}: its transport cannot stream files, so a disk cannot move to or "
                                 "from it")
    moved = Moved()
    there = _exists(dst_t, dst, deadline)
    if not _exists(src_t, src, deadline):
        return moved
    # without -U: qemu-img takes the image lock, so a disk a QEMU still has open is refused here
    steps = plan_move(_chain(src_t, src, deadline), src, dst)
    if there:
        moved.finished = True
    else:
        todo = [step for step in steps
                # a base image the target already has, or a layer an interrupted move placed
                # (verified) before the disk
                if not ((not step.own or step.dst != dst) and _exists(dst_t, step.dst, deadline))]
        moved.files, moved.bytes = len(todo), _carry(src_t, dst_t, todo, deadline, note)
    # the disk first: once it is gone from the source, nothing there claims the layers
    for step in reversed(steps):
        if step.own:
            src_t.run(["rm", "-f", step.src], timeout=_left(deadline, COMMAND_S, src_t.host))
    return moved


def _carry(src_t: Streaming, dst_t: Streaming, steps: Sequence[Step], deadline: float | None,
           note: Callable[[str], None]) -> int:
    """Stream each file source -> target through this machine (nothing lands here), in order,
    under a temporary name; then verify it and give it its real name (_place) while the next
    file streams: the hosts hash, this machine only passes bytes. A file is placed only after
    every file before it was. Returns the bytes sent."""
    sent: list[str] = []
    total = 0
    try:
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="ravel-move") as pool:
            placing: Future[None] | None = None
            for step in steps:
                note(f"sending {posixpath.basename(step.src)}")
                want = pool.submit(_sha256_on, src_t, step.src, deadline)
                parent, name = posixpath.split(step.dst)
                dst_t.run(["mkdir", "-p", "-m", "700", parent], timeout=_left(deadline, COMMAND_S, dst_t.host))
                # a fixed name: whatever an interrupted run left there, the next run replaces
                tmp = posixpath.join(parent, f".{name}.moving")
                sent.append(tmp)
                with src_t.reading(step.src) as blocks, dst_t.writing(tmp, blocks.mode) as out:
                    passed = pump(blocks, out)
                total += passed.size
                if placing is not None:
                    placing.result()
                placing = pool.submit(_place, src_t, dst_t, step, tmp, passed.sha256, want, deadline)
            if placing is not None:
                placing.result()
    except BaseException:
        try:
            dst_t.run(["rm", "-f", *sent], timeout=COMMAND_S, check=False)
        except TransportError:
            pass  # the host is not answering: the next run's copies replace these fixed names
        raise
    return total


def _place(src_t: Transport, dst_t: Transport, step: Step, tmp: str, passed: str, want: Future[str],
           deadline: float | None) -> None:
    """The target's copy takes its real name once what passed here and what the target holds
    both hash as the source's file does."""
    _same(src_t, step.src, passed, want.result())
    _same(dst_t, step.dst, _sha256_on(dst_t, tmp, deadline), want.result())
    if step.backing:
        dst_t.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-F", step.backing_format or "qcow2",
                   "-b", step.backing, tmp], timeout=_left(deadline, COMMAND_S, dst_t.host))
    dst_t.run(["mv", "-f", "-T", tmp, step.dst], timeout=_left(deadline, COMMAND_S, dst_t.host))


def _same(t: Transport, path: str, got: str, want: str) -> None:
    if got != want:
        raise TransportError(f"{t.host}: {path} arrived changed (sha256 {got[:12]}, expected {want[:12]}); "
                             "nothing was moved", hint="publish again: the move is retried from the start")


def _chain(t: Transport, path: str, deadline: float | None) -> list[dict[str, Any]]:
    try:
        out = t.run(["qemu-img", "info", "--backing-chain", "--output=json", path],
                    timeout=_left(deadline, COMMAND_S, t.host)).stdout
    except CommandFailed as exc:
        if "lock" in exc.stderr:
            raise StateError(f"{t.host}: {path} is still in use (a VM runs on it); not moving it",
                             hint="publish again once the VM has stopped") from None
        raise
    images = json.loads(out)
    return [images] if isinstance(images, dict) else images


def _exists(t: Transport, path: str, deadline: float | None) -> bool:
    return t.run(["test", "-e", path], timeout=_left(deadline, COMMAND_S, t.host), check=False).rc == 0


def _sha256_on(t: Transport, path: str, deadline: float | None) -> str:
    out = t.run(["sha256sum", path], timeout=_left(deadline, HASH_S, t.host)).stdout
    # a name with a backslash or newline is printed escaped, with a leading backslash
    return out.split()[0].lstrip("\\") if out.strip() else ""


def _left(deadline: float | None, cap: float, host: str) -> float:
    if deadline is None:
        return cap
    left = deadline - time.monotonic()
    if left <= 0:
        raise TransportError(f"{host}: out of time while moving a VM's disk",
                             hint="raise --timeout; publishing again continues where this stopped")
    return min(cap, left)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
