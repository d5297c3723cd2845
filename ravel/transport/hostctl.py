"""Talking to the host runtime (ravel/host) on a host, through any transport.

The runtime ships as one zipapp built from ravel/host; it reads a JSON document on stdin and
prints a JSON report, so the same call works in a local namespace and over SSH.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import CommandFailed, TransportError
from ..host.desired import Desired, to_doc
from .base import Transport

RUNTIME_TIMEOUT_S = 300
REMOTE_PYTHON = "python3"  # the host's own interpreter; the runtime needs the standard library only


def bundle(cache_dir: Path) -> Path:
    """Build (once per content) the zipapp of ravel/host; returns its local path."""
    from ..host import bundle as host_bundle

    src = Path(host_bundle.__file__).parent
    digest = hashlib.sha256()
    for f in sorted(src.glob("*.py")):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    dest = cache_dir / f"ravel-host-{digest.hexdigest()[:12]}.pyz"
    if not dest.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        os.close(fd)
        try:
            host_bundle.build_zipapp(tmp)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return dest


def install(transport: Transport, pyz: Path, directory: str, timeout: float) -> str:
    """Make sure the host holds this exact runtime (its content hash is in the file name),
    sending it only when missing; returns its path on the host. Bounded by `timeout`, which
    includes waiting for the host to answer at all."""
    remote = posixpath.join(directory, pyz.name)
    if transport.run(["test", "-f", remote], timeout=timeout, check=False).rc != 0:
        transport.put(pyz, remote, 0o755)
    return remote


class HostRuntime:
    def __init__(self, transport: Transport, pyz: str, python: str = REMOTE_PYTHON,
                 deadline: float | None = None) -> None:
        """`deadline` (time.monotonic()): no call may run past it (`ravel publish --timeout`)."""
        self.t = transport
        self.pyz = pyz
        self.python = python
        self.deadline = deadline

    def _bounded(self, command: str, timeout: float) -> float:
        if self.deadline is None:
            return timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TransportError(f"{self.t.host}: out of time before `ravel-host {command}`",
                                 hint="raise --timeout; re-running continues where this stopped")
        return min(timeout, left)

    def _call(self, command: str, doc: dict[str, Any] | None = None, timeout: float = RUNTIME_TIMEOUT_S) -> dict[str, Any]:
        data = json.dumps(doc).encode() if doc is not None else None
        argv, data = self._invocation(command, data)
        result = self.t.run(argv, input=data, timeout=self._bounded(command, timeout), check=False)
        try:
            report = json.loads(result.stdout) if result.stdout.strip() else {}
        except json.JSONDecodeError:
            report = {}
        if result.rc != 0:
            errors = report.get("errors") if isinstance(report, dict) else None
            detail = "; ".join(str(e) for e in errors) if errors else (result.stderr.strip() or result.stdout.strip())
            raise CommandFailed(self.t.host, f"ravel-host {command}", result.rc, detail)
        if not isinstance(report, dict):
            raise TransportError(f"{self.t.host}: host runtime printed something that is not a report")
        return report

    def _invocation(self, command: str, data: bytes | None) -> tuple[list[str], bytes | None]:
        return [self.python, self.pyz, command], data

    def facts(self) -> dict[str, Any]:
        return self._call("facts", timeout=60)

    # the desired state travels as its JSON document, parsed again on the host by the same code
    def apply(self, desired: Desired) -> dict[str, Any]:
        return self._call("apply", to_doc(desired))

    def observe(self, desired: Desired, timeout: float = 60) -> dict[str, Any]:
        return self._call("observe", to_doc(desired), timeout=timeout)

    def destroy(self, desired: Desired) -> dict[str, Any]:
        return self._call("destroy", to_doc(desired))

    def ready(self, run_dir: str, checks: list[dict[str, Any]], timeout: float = 30) -> dict[str, Any]:
        """Each guest's readiness, checked on the host (ravel/host/ready.py)."""
        return self._call("ready", {"run_dir": run_dir, "checks": checks}, timeout=timeout)


# The runtime started from memory: the zipapp comes first on stdin, goes into a memfd and is
# imported from /proc/self/fd/N; then the runtime reads the rest of stdin as usual.
_FROM_MEMORY = (
    "import os,sys\n"
    "n=int(sys.argv[1]);code=sys.stdin.buffer.read(n)\n"
    "if len(code)!=n:sys.exit('ravel-host: short input')\n"
    "fd=os.memfd_create('ravel-host')\n"
    "view=memoryview(code)\n"
    "while view:view=view[os.write(fd,view):]\n"
    "sys.path.insert(0,'/proc/self/fd/%d'%fd)\n"
    "from ravel.host.commands import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


class ReadOnlyRuntime(HostRuntime):
    """The runtime's read-only `observe`, run without installing anything on the host: `ravel
    publish --dry-run` leaves a host exactly as it found it (not even a newer runtime file)."""

    def __init__(self, transport: Transport, pyz: Path, python: str = REMOTE_PYTHON,
                 deadline: float | None = None) -> None:
        super().__init__(transport, str(pyz), python, deadline)
        self.code = pyz.read_bytes()

    def _invocation(self, command: str, data: bytes | None) -> tuple[list[str], bytes | None]:
        if command != "observe":  # the others change the host, or need not run here
            raise ValueError(f"ravel-host {command} is not read-only")
        return [self.python, "-c", _FROM_MEMORY, str(len(self.code)), command], self.code + (data or b"")
