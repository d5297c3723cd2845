"""Consistent snapshots of the running VMs on this host (the ``snapshot`` command), and the
disk "settling" that VM start and stop do afterwards.

Protocol (so that every host of an app pauses together, driven by ravel):

1. stdin, one JSON line: {"tag", "memory": bool, "go_timeout": s,
   "vms": [{"name", "qmp", "disks": [{"path", "drive"}]}]}
2. prepare, outside the pause: connect QMP, read each drive's current top and size, give it a
   second name (a hard link: the frozen layer ``layers/<vm>-disk<i>.<tag>.qcow2``), create the new
   empty overlay over that name; stdout: {"ready": true} (or {"error": ...} and exit 1)
3. stdin: "go" (or anything else: abort, undo, exit 1)
4. the pause window, no process launched in it: QMP ``stop`` on every VM, ``blockdev-snapshot-sync``
   onto each new overlay (mode existing), with ``--memory`` a migration of RAM and device state
   to a file, then ``cont``; stdout: the report (pause times, each disk's layer chain with sha256)

With ``memory``, the room a VM's state needs is checked while preparing, before any pause: the
state is at most the guest RAM QEMU holds (its RAM blocks, and no more than the process's
resident and swapped memory) plus page headers and device state, so a full disk is one clear
"no space left on DIR: need N, have M" and nothing is paused. A state written only in part (the
disk filled anyway) is removed, as is every state of a run that failed; states of earlier runs
(ravel removes them once stored; a run that was killed may not have) are removed first.

Why a new overlay under a new name, and not a rename of the open image: QEMU reopens an image by
its file name when its permissions change (as when it becomes a backing file), so a file renamed
under a running QEMU gets another file's contents read in its place (seen on QEMU 7.2: the
guest lost data). So nothing QEMU has open is ever renamed while it runs. The canonical path (the
one in the VM's argv) keeps the old top until QEMU exits; a marker ``layers/<disk>.top`` names the
live overlay, and `settle` (run by the runtime before a VM starts and after it stops) moves that
overlay to the canonical path. Its backing file is the frozen layer's own name, so the chain
stays whole: canonical -> layer N -> ... -> layer 1 -> base image.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import struct
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import proc

QMP_TIMEOUT = 10.0
MIGRATE_TIMEOUT = 300.0
GO_TIMEOUT = 120.0
HASH_CHUNK = 4 << 20
HASHES_FILE = "hashes.json"
TOP_SUFFIX = ".top"
STATE_SUFFIX = ".state"
STATE_MARGIN = 8 << 20  # device state and stream headers beyond the pages themselves
MIB = 1 << 20


class SnapshotError(Exception):
    pass


# -- QMP session (kept open across the pause) ----------------------------------------------------

class QMP:
    def __init__(self, path: str, timeout: float = QMP_TIMEOUT) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise SnapshotError(f"cannot connect to QMP socket {path}: {exc.strerror or exc}") from None
        self.reader = self.sock.makefile("rb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise SnapshotError(f"{path}: unexpected QMP greeting")
        self.cmd("qmp_capabilities")

    def _read(self) -> Dict[str, Any]:
        try:
            line = self.reader.readline(1 << 22)
        except OSError as exc:
            raise SnapshotError(f"QMP {self.path}: {exc}") from None
        if not line:
            raise SnapshotError(f"QMP {self.path}: connection closed")
        return json.loads(line)

    def cmd(self, name: str, **args: Any) -> Any:
        msg: Dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = args
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as exc:
            raise SnapshotError(f"QMP {self.path}: {exc}") from None
        for _ in range(10000):  # asynchronous events come in between; bounded
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                err = reply["error"]
                raise SnapshotError(f"QMP {name}: {err.get('desc', err)}")
        raise SnapshotError(f"QMP {name}: no reply among the events")

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.sock.close()


# -- qcow2 and hashing (pure file reads) ---------------------------------------------------------

def qcow2_has_data(path: str) -> bool:
    """True when a qcow2 file maps any cluster (or holds internal snapshots); an empty overlay
    adds nothing to its backing chain."""
    with open(path, "rb") as f:
        head = f.read(72)
        if len(head) < 72 or head[:4] != b"QFI\xfb":
            return True  # not qcow2: treat as data
        l1_size, l1_offset = struct.unpack(">IQ", head[36:48])
        nb_snapshots = struct.unpack(">I", head[60:64])[0]
        if nb_snapshots:
            return True
        f.seek(l1_offset)
        table = f.read(l1_size * 8)
    mask = 0x00FFFFFFFFFFFE00
    return any(struct.unpack_from(">Q", table, i)[0] & mask for i in range(0, len(table), 8))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(HASH_CHUNK)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


class HashCache:
    """sha256 of files that do not change (frozen layers, base images), by path, size, mtime
    and inode, so a second snapshot does not read the whole chain again."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path) as f:
                self.entries: Dict[str, Dict[str, Any]] = json.load(f)
        except (OSError, ValueError):
            self.entries = {}

    def sha256(self, path: str) -> Tuple[str, int]:
        st = os.stat(path)
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        e = self.entries.get(path)
        if e and e.get("key") == key:
            return e["sha256"], st.st_size
        digest = sha256_file(path)
        self.entries[path] = {"key": key, "sha256": digest}
        return digest, st.st_size

    def save(self) -> None:
        """Best effort: a cache that cannot be written (a full disk) is only hashed again."""
        tmp = f"{self.path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(self.entries, f, indent=0, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            proc.unlink_quiet(tmp)


def backing_chain(path: str) -> List[Dict[str, Any]]:
    """The image and everything below it, base first: [{path, format, virtual_size}]."""
    out = proc.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", path], timeout=60).stdout
    images = json.loads(out)
    if isinstance(images, dict):
        images = [images]
    chain = []
    for img in reversed(images):
        chain.append({"path": img["filename"], "format": img["format"],
                      "virtual_size": int(img["virtual-size"])})
    return chain


# -- settling ------------------------------------------------------------------------------------

def layer_dir(disk_path: str) -> str:
    return os.path.join(os.path.dirname(disk_path), "layers")


def top_marker(disk_path: str) -> str:
    return os.path.join(layer_dir(disk_path), os.path.basename(disk_path) + TOP_SUFFIX)


def drive_files(argv: Sequence[str]) -> List[str]:
    """The image files of a QEMU argv's -drive options."""
    files = []
    for i, arg in enumerate(argv[:-1]):
        if arg != "-drive":
            continue
        for part in argv[i + 1].split(","):
            if part.startswith("file="):
                files.append(part[len("file="):])
    return files


def _marked_top(disk_path: str) -> Optional[str]:
    # ".next" is written before a pause and becomes the marker after it; one left behind by a
    # run that died names an overlay whose backing is the live image's second name, so it is
    # as good as the older marker, and newer
    for marker in (top_marker(disk_path) + ".next", top_marker(disk_path)):
        try:
            with open(marker) as f:
                top = json.load(f)["path"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(top, str) and os.path.exists(top):
            return top
    return None


def settle(disk_paths: Sequence[str]) -> List[str]:
    """Move each disk's live overlay (after a snapshot) to its canonical path. Only call this
    while no QEMU has the disk open. Returns what was moved, for the report."""
    moved = []
    for path in disk_paths:
        top = _marked_top(path)
        if top is None:
            continue
        os.replace(top, path)
        moved.append(f"{os.path.basename(top)} -> {os.path.basename(path)}")
        for marker in (top_marker(path) + ".next", top_marker(path)):
            proc.unlink_quiet(marker)
        # the live overlays of earlier snapshots are second names of frozen layers by now
        # (each was linked as the next layer): drop the extra names
        stem = os.path.basename(path)[: -len(".qcow2")] if path.endswith(".qcow2") else os.path.basename(path)
        for f in proc.list_dir(layer_dir(path)):
            if f.startswith(stem + ".") and f.endswith(".top.qcow2"):
                proc.unlink_quiet(os.path.join(layer_dir(path), f))
    return moved


def current_top(disk_path: str) -> str:
    """The file a running VM writes for this disk: the live overlay after a snapshot, else the
    canonical path."""
    return _marked_top(disk_path) or disk_path


class LineReader:
    """Lines from a file descriptor with a bounded wait, without Python's buffering hiding a
    line that has already arrived from select()."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def readline(self, timeout: float) -> Optional[str]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                line, self.buf = self.buf, b""
                return line.decode(errors="replace") if line else ""
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")


# -- the snapshot --------------------------------------------------------------------------------

class _Disk:
    def __init__(self, vm: str, index: int, path: str, drive: str, tag: str) -> None:
        self.vm, self.index, self.path, self.drive = vm, index, path, drive
        d = layer_dir(path)
        stem = os.path.basename(path)[: -len(".qcow2")] if path.endswith(".qcow2") else os.path.basename(path)
        self.top = current_top(path)  # what QEMU writes now
        self.layer = os.path.join(d, f"{stem}.{tag}.qcow2")  # its frozen name
        self.new_top = os.path.join(d, f"{stem}.{tag}.top.qcow2")
        self.virtual_size = 0
        self.prepared = False
        self.frozen = False


def _write_json(path: str, doc: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        proc.unlink_quiet(tmp)
        raise


# -- room for memory states ----------------------------------------------------------------------

def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def size_text(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 10 << 30 else f"{n / MIB:.1f} MiB"


def no_space(where: str, need: int, have: int) -> str:
    return f"no space left on {where}: need {size_text(need)}, have {size_text(have)}"


def ram_bytes(q: QMP) -> int:
    """Bytes of every RAM block of the VM (guest RAM, ROMs, video memory): what a migration
    stream can carry at most, page by page."""
    try:
        text = q.cmd("human-monitor-command", **{"command-line": "info ramblock"})
        total = 0
        for line in str(text).splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 5:
                total += int(parts[-2], 16)  # Used
        if total:
            return total
    except (SnapshotError, ValueError):
        pass
    summary = q.cmd("query-memory-size-summary")
    return int(summary.get("base-memory", 0)) + int(summary.get("plugged-memory") or 0)


def resident_bytes(pidfile: Optional[str]) -> Optional[int]:
    """Resident plus swapped memory of the QEMU process: a page of the guest that was never
    touched is in neither and is saved as a zero page."""
    pid = proc.read_pidfile(pidfile) if pidfile else None
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return sum(int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmSwap") if k in fields)
    except (OSError, ValueError):
        return None


def state_bound(q: QMP, pidfile: Optional[str]) -> int:
    """At most how large a paused VM's saved state is: each page once (the VM does not run, so
    nothing is sent twice), a page that holds data at most its 4 KiB and a header, a zero page
    a header only."""
    ram = ram_bytes(q)
    rss = resident_bytes(pidfile)
    data = ram if rss is None else min(ram, rss)
    return data + data // 256 + (ram // 4096) * 16 + STATE_MARGIN


def _clear_old_states(directory: str, vm: str) -> None:
    for f in proc.list_dir(directory):
        if f.startswith(vm + ".") and f.endswith(STATE_SUFFIX):
            proc.unlink_quiet(os.path.join(directory, f))


def _check_room(states: Dict[str, str], need: Dict[str, int]) -> None:
    by_dir: Dict[str, int] = {}
    for vm, path in states.items():
        by_dir[os.path.dirname(path)] = by_dir.get(os.path.dirname(path), 0) + need[vm]
    for d, n in sorted(by_dir.items()):
        have = free_bytes(d)
        if n > have:
            vms = ", ".join(sorted(vm for vm, p in states.items() if os.path.dirname(p) == d))
            raise SnapshotError(no_space(d, n, have) + f" (the memory state of VM {vms})")


def _state_failure(path: str, need: int, why: str) -> str:
    """A failed save, said as a full disk when that is what it was (QEMU only sees its pipe
    to `cat` break)."""
    try:
        written = os.path.getsize(path)
    except OSError:
        written = 0
    d = os.path.dirname(path)
    try:
        free = free_bytes(d)
    except OSError:
        return why
    if free < MIB or written + free < need:
        return no_space(d, need, written + free) + f" (the memory state stopped at {size_text(written)})"
    return why


def _prepare(disk: _Disk, qmp: QMP, block: List[Dict[str, Any]]) -> None:
    info = next((b for b in block if b.get("device") == disk.drive), None)
    if info is None or "inserted" not in info:
        raise SnapshotError(f"VM {disk.vm}: QEMU has no drive {disk.drive!r}")
    ins = info["inserted"]
    writes = _image_file(str(ins.get("file", "")))
    if writes != disk.top:
        raise SnapshotError(f"VM {disk.vm}: drive {disk.drive} writes {writes}, expected {disk.top}")
    disk.virtual_size = int(ins["image"]["virtual-size"])
    os.makedirs(os.path.dirname(disk.layer), mode=0o700, exist_ok=True)
    for stale in (disk.layer, disk.new_top):
        proc.unlink_quiet(stale)
    os.link(disk.top, disk.layer)  # the frozen layer's own name, never renamed while QEMU runs
    proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", disk.layer, "-F", "qcow2",
              disk.new_top, str(disk.virtual_size)], timeout=60)
    disk.prepared = True


def _image_file(name: str) -> str:
    """The file of a block node's name; after a snapshot QEMU names the top with a json: spec
    (its backing is not the one its header names)."""
    if not name.startswith("json:"):
        return name
    try:
        spec = json.loads(name[5:])
        return str(spec["file"]["filename"])
    except (ValueError, KeyError, TypeError):
        return name


def _undo(disk: _Disk) -> None:
    if disk.frozen:
        return
    proc.unlink_quiet(disk.new_top)
    proc.unlink_quiet(disk.layer)


def run_snapshot(request: Dict[str, Any], stdin: LineReader, stdout: Any) -> int:
    tag = str(request["tag"])
    memory = bool(request.get("memory"))
    go_timeout = float(request.get("go_timeout", GO_TIMEOUT))
    sessions: Dict[str, QMP] = {}
    disks: List[_Disk] = []
    states: Dict[str, str] = {}
    need: Dict[str, int] = {}

    def say(doc: Dict[str, Any]) -> None:
        stdout.write(json.dumps(doc) + "\n")
        stdout.flush()

    try:
        for vm in request["vms"]:
            q = sessions[vm["name"]] = QMP(vm["qmp"])
            status = q.cmd("query-status")
            if status.get("status") != "running":
                raise SnapshotError(f"VM {vm['name']} is {status.get('status')}, not running")
            block = q.cmd("query-block")
            for i, d in enumerate(vm["disks"]):
                disk = _Disk(vm["name"], i, d["path"], d["drive"], tag)
                disks.append(disk)
                _prepare(disk, q, block)
            if memory:
                where = layer_dir(vm["disks"][0]["path"]) if vm["disks"] else os.path.dirname(vm["qmp"])
                os.makedirs(where, mode=0o700, exist_ok=True)
                _clear_old_states(where, vm["name"])
                states[vm["name"]] = os.path.join(where, f"{vm['name']}.{tag}{STATE_SUFFIX}")
                need[vm["name"]] = state_bound(q, vm.get("pidfile"))
                q.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        _check_room(states, need)
        for disk in disks:  # written before the pause: a crash after it still settles correctly
            _write_json(top_marker(disk.path) + ".next", {"path": disk.new_top})
    except (SnapshotError, proc.CommandFailed, OSError, KeyError, TypeError, ValueError) as exc:
        for disk in disks:
            _undo(disk)
            proc.unlink_quiet(top_marker(disk.path) + ".next")
        for q in sessions.values():
            q.close()
        say({"error": str(exc)})
        return 1

    say({"ready": True, "disks": len(disks)})
    word = stdin.readline(go_timeout)
    if word is None or word.strip() != "go":
        for disk in disks:
            _undo(disk)
            proc.unlink_quiet(top_marker(disk.path) + ".next")
        for q in sessions.values():
            q.close()
        say({"error": "aborted before the pause" if word is not None else f"no go within {go_timeout:g} s"})
        return 1

    errors: List[str] = []
    paused: List[str] = []
    t0 = time.time()
    try:
        for name, q in sessions.items():
            q.cmd("stop")
            paused.append(name)
        for disk in disks:
            try:
                sessions[disk.vm].cmd("blockdev-snapshot-sync", device=disk.drive, **{
                    "snapshot-file": disk.new_top, "format": "qcow2", "mode": "existing"})
                disk.frozen = True
            except SnapshotError as exc:
                errors.append(f"VM {disk.vm} disk {disk.index}: {exc}")
        if memory and not errors:
            for name, path in states.items():
                sessions[name].cmd("migrate", uri=f"exec:cat > {_shell_quote(path)}")
            for name, path in states.items():
                try:
                    _wait_migration(sessions[name], name)
                except SnapshotError as exc:
                    errors.append(f"VM {name}: saving memory failed: {_state_failure(path, need[name], str(exc))}")
    except SnapshotError as exc:
        errors.append(str(exc))
    finally:
        for name in paused:
            try:
                sessions[name].cmd("cont")
            except SnapshotError as exc:
                errors.append(f"VM {name}: could not resume: {exc}")
        t1 = time.time()
    for disk in disks:
        nxt = top_marker(disk.path) + ".next"
        if disk.frozen:
            os.replace(nxt, top_marker(disk.path))
        else:
            proc.unlink_quiet(nxt)
            _undo(disk)
    for q in sessions.values():
        q.close()
    report: Dict[str, Any] = {"pause": {"start": t0, "end": t1, "seconds": t1 - t0}, "vms": {}}
    if errors:
        for path in states.values():  # whole or in part, none of them is stored
            proc.unlink_quiet(path)
        report["error"] = "; ".join(errors)
        say(report)
        return 1
    cache = HashCache(os.path.join(layer_dir(disks[0].path), HASHES_FILE)) if disks else None
    for disk in disks:
        assert cache is not None
        chain = []
        for pos, img in enumerate(backing_chain(disk.layer)):
            sha, size = cache.sha256(img["path"])
            img.update(sha256=sha, size=size,
                       empty=pos > 0 and img["format"] == "qcow2" and not qcow2_has_data(img["path"]))
            chain.append(img)
        report["vms"].setdefault(disk.vm, {"disks": []})["disks"].append(
            {"index": disk.index, "layer": disk.layer, "top": disk.new_top,
             "virtual_size": disk.virtual_size, "chain": chain})
    for name, path in states.items():
        sha, size = sha256_file(path), os.path.getsize(path)
        report["vms"].setdefault(name, {"disks": []})["memory"] = {"path": path, "sha256": sha, "size": size}
    if cache is not None:
        cache.save()
    say(report)
    return 0


def _wait_migration(q: QMP, name: str) -> None:
    deadline = time.monotonic() + MIGRATE_TIMEOUT
    while time.monotonic() < deadline:
        st = q.cmd("query-migrate")
        status = st.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise SnapshotError(str(st.get("error-desc", status)))
        time.sleep(0.01)
    q.cmd("migrate_cancel")
    raise SnapshotError(f"it took longer than {MIGRATE_TIMEOUT:g} s")


def _shell_quote(path: str) -> str:
    return "'" + path.replace("'", "'\\''") + "'"


def main(stdin_fd: int = 0, stdout: Any = None) -> int:
    stdout = stdout or sys.stdout
    stdin = LineReader(stdin_fd)
    line = stdin.readline(GO_TIMEOUT) or ""
    try:
        request = json.loads(line)
        if not isinstance(request, dict) or not isinstance(request.get("vms"), list) or not request.get("tag"):
            raise ValueError("needs tag and vms")
    except ValueError as exc:
        stdout.write(json.dumps({"error": f"invalid snapshot request: {exc}"}) + "\n")
        return 2
    return run_snapshot(request, stdin, stdout)
