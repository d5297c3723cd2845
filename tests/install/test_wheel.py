"""`pip install` of ravel's wheel gives a working `ravel` without the Makefile or this tree: the
wheel is built from a copy of the sources (so nothing left over in the tree leaks into it),
installed into a fresh venv, and run from there.

Offline and quick: the wheel is built with the setuptools of the test environment (a [test]
dependency) instead of an isolated build environment fetched from an index, and the fresh venv
sees ravel's dependencies through a .pth naming the test environment's site-packages instead of
downloading them again. Only ravel itself comes from the wheel, which is what this checks: its
modules, package data (catalogues, schemas), the host runtime bundle made from the installed
ravel/host, and the `ravel` entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import ravel

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240  # each step; building and installing take seconds


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    home: Path  # its RAVEL_HOME
    cwd: Path  # outside this tree, so nothing imports ravel from it

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return dict(env, RAVEL_HOME=str(self.home), COLUMNS="200")

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / program), *args], capture_output=True,
                              text=True, timeout=TIMEOUT, env=self.env(), cwd=self.cwd,
                              stdin=subprocess.DEVNULL)


def _sh(*argv: object) -> None:
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=TIMEOUT,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"{argv}: {p.stdout}\n{p.stderr}"


def _dependency_dirs() -> list[str]:
    """Where this interpreter finds ravel's dependencies, minus anything holding ravel itself."""
    return [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)
            and not os.path.exists(os.path.join(p, "ravel"))]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    import setuptools  # the builder, a [test] dependency: older ones cannot make wheels alone

    assert tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1), \
        f"setuptools {setuptools.__version__} here: `make venv` installs setuptools>=70.1 ([test])"
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT / "ravel", src / "ravel", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    _sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
        "--no-build-isolation", "--wheel-dir", tmp / "dist", src)
    wheel, = (tmp / "dist").glob("ravel-*.whl")
    venv = tmp / "venv"
    _sh(sys.executable, "-m", "venv", "--without-pip", venv)
    _sh(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet",
        "--no-deps", "--no-index", wheel)
    site, = (venv / "lib").glob("python3*/site-packages")
    (site / "ravel-test-dependencies.pth").write_text("".join(d + "\n" for d in _dependency_dirs()))
    (tmp / "elsewhere").mkdir()
    return Installed(wheel, venv, tmp / "home", tmp / "elsewhere")


def test_every_file_under_ravel_is_in_the_wheel(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    source = {str(p.relative_to(ROOT)) for p in (ROOT / "ravel").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert {n for n in source if not n.endswith(".py")}, "no data files at all: wrong tree?"
    left_out = sorted(source - names)
    assert not left_out, f"not in the wheel (add them to [tool.setuptools.package-data]): {left_out}"


def test_ravel_runs_from_the_installed_package(installed):
    p = installed.run("python", "-c", "import ravel; print(ravel.__file__)")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().startswith(str(installed.venv)), p.stdout  # not this tree
    p = installed.run("ravel", "--version")
    assert p.returncode == 0 and p.stdout.strip() == f"ravel {ravel.__version__}", p.stdout + p.stderr


def test_doctor_from_the_wheel(installed):
    p = installed.run("ravel", "doctor", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert doc["ok"] is True and checks["host-runtime"]["ok"], checks["host-runtime"]
    # the host runtime bundle was made from the installed ravel/host: the same modules
    pyz, = (installed.home / "cache").glob("ravel-host-*.pyz")
    shipped = {n for n in zipfile.ZipFile(pyz).namelist() if n.startswith("ravel/host/")}
    assert shipped == {f"ravel/host/{f.name}" for f in (ROOT / "ravel" / "host").glob("*.py")}


def test_plan_from_the_wheel_matches_the_tree(installed):
    blueprint = str(ROOT / "blueprints" / "demo.yaml")
    p = installed.run("ravel", "plan", blueprint, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    here = subprocess.run([sys.executable, "-m", "ravel", "plan", blueprint, "--json"], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert here.returncode == 0, here.stderr
    assert json.loads(p.stdout) == json.loads(here.stdout)  # the catalogues came along
    assert json.loads(p.stdout)["hosts"]
    p = installed.run("ravel", "plan", blueprint)
    assert p.returncode == 0 and "demo: 4 VMs on" in p.stdout, p.stdout + p.stderr
