"""A host that is a network namespace on this machine: commands run under `ip netns exec`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from ..errors import CommandFailed, TransportError
from .base import CommandResult


class NamespaceTransport:
    def __init__(self, host: str, namespace: str) -> None:
        self.host = host
        self.namespace = namespace

    def run(self, argv: Sequence[str], input: bytes | None = None, timeout: float = 120,
            check: bool = True) -> CommandResult:
        full = ["ip", "netns", "exec", self.namespace, *argv]
        try:
            proc = subprocess.run(full, input=input, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TransportError(f"{self.host}: `{' '.join(argv)}` did not finish within {timeout:.0f} s") from None
        except FileNotFoundError:
            raise TransportError(f"{self.host}: the `ip` command is missing (install iproute2)") from None
        result = CommandResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
        if proc.returncode != 0 and "Cannot open network namespace" in result.stderr:
            raise TransportError(f"{self.host}: network namespace {self.namespace} does not exist")
        if check and proc.returncode != 0:
            raise CommandFailed(self.host, list(argv), proc.returncode, result.stderr)
        return result

    # The namespace shares this machine's filesystem: a copy is all a transfer needs.
    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        dest = Path(remote)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(local).resolve() != dest.resolve():
            shutil.copyfile(local, dest)
        dest.chmod(mode)

    def get(self, remote: str, local: Path) -> None:
        if Path(remote).resolve() != Path(local).resolve():
            shutil.copyfile(remote, local)
