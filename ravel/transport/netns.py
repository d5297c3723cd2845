"""A host that is a network namespace on this machine: commands run under `ip netns exec`."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Sequence

from ..errors import CommandFailed, MissingFile, TransportError
from .base import READ_LIMIT, CommandResult


class NamespaceTransport:
    local = True  # the namespace shares this machine's filesystem

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

    def close(self) -> None:
        return None
