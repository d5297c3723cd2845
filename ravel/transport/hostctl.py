"""Talking to the host runtime (ravel/host) on a host, through any transport.

The runtime ships as one zipapp built from ravel/host; it reads a JSON document on stdin and
prints a JSON report, so the same call works in a local namespace and over SSH.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CommandFailed, TransportError
from .base import Transport

RUNTIME_TIMEOUT_S = 300


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


class HostRuntime:
    def __init__(self, transport: Transport, pyz: str, python: str | None = None) -> None:
        self.t = transport
        self.pyz = pyz
        self.python = python or sys.executable

    def _call(self, command: str, doc: dict[str, Any] | None = None, timeout: float = RUNTIME_TIMEOUT_S) -> dict[str, Any]:
        data = json.dumps(doc).encode() if doc is not None else None
        result = self.t.run([self.python, self.pyz, command], input=data, timeout=timeout, check=False)
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

    def facts(self) -> dict[str, Any]:
        return self._call("facts", timeout=60)

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        return self._call("apply", doc)

    def observe(self, doc: dict[str, Any]) -> dict[str, Any]:
        return self._call("observe", doc, timeout=60)

    def destroy(self, doc: dict[str, Any]) -> dict[str, Any]:
        return self._call("destroy", doc)
