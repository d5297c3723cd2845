"""The layering of `ravel/` is enforced, not only described: the import-linter contracts in
pyproject.toml (layers, ravel.host standing alone, no import cycles) must all hold."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import ravel

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_import_contracts_hold():
    # --no-cache: never a stale graph, and nothing written into the working tree
    p = subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, f"lint-imports failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr}"


def test_host_is_forbidden_every_other_part_of_ravel():
    # the layers contract lists every top-level module (it is exhaustive); the forbidden one
    # names them by hand, so a new module must be added there too
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    [alone] = [c for c in contracts if c["id"] == "host-alone"]
    others = {f"ravel.{m.name}" for m in pkgutil.iter_modules(ravel.__path__)} - {"ravel.host"}
    assert set(alone["forbidden_modules"]) == others
