"""The snapshot, store and import commands as a user runs them: help, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def ravel(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAVEL_HOME=str(home), COLUMNS="200")
    p = subprocess.run([sys.executable, "-m", "ravel", *args], capture_output=True, text=True, timeout=60, env=env,
                       cwd=ROOT, stdin=subprocess.DEVNULL)
    assert "Traceback" not in p.stderr, p.stderr
    return p


@pytest.mark.parametrize("cmd", [["snapshot"], ["snapshots"], ["store", "gc"], ["import"]])
def test_help(tmp_path, cmd):
    p = ravel(tmp_path, *cmd, "--help")
    assert p.returncode == 0 and "Usage:" in p.stdout


def test_errors_are_one_line_with_their_exit_code(tmp_path):
    p = ravel(tmp_path, "snapshot", "nope")
    assert p.returncode == 7 and "no app named 'nope'" in p.stderr
    p = ravel(tmp_path, "snapshots", "show", "nothing")
    assert p.returncode == 8 and "no snapshot named 'nothing'" in p.stderr
    p = ravel(tmp_path, "snapshots", "--store", "ftp://x/y")
    assert p.returncode == 8 and "unknown scheme 'ftp'" in p.stderr
    p = ravel(tmp_path, "publish", "--from", "nothing")
    assert p.returncode == 8 and "no snapshot named 'nothing'" in p.stderr
    p = ravel(tmp_path, "publish")
    assert p.returncode == 2 and "give a blueprint FILE or --from SNAPSHOT" in p.stderr
    p = ravel(tmp_path, "snapshots", "rm")
    assert p.returncode == 2


def test_empty_store(tmp_path):
    assert ravel(tmp_path, "snapshots").stdout.startswith("no snapshots in file://")
    assert json.loads(ravel(tmp_path, "snapshots", "--json").stdout) == []
    p = ravel(tmp_path, "store", "gc")
    assert p.returncode == 0 and "removed 0 layers" in p.stdout
