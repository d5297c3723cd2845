"""cloud-init NoCloud seeds on this machine: one ISO 9660 volume labelled `cidata` per
`cloud_init` VM, and the check of the user's own user-data before anything is made.

A seed holds the guest's private SSH host key, so it is written 0600 in a 0700 folder of the
app's data (never /tmp). Its file is named by the sha256 of its three files, so an unchanged seed
keeps its path (a re-publish changes nothing, not even the file's mtime) and a changed one gets
a new path; the VM's older seeds are removed. The instance-id is derived from the guest's host
key, which is made once and removed with the VM (keys.forget_guest_key): stable across
stop/start and re-publish, new when the VM is re-created.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from email import message_from_string
from pathlib import Path
from typing import BinaryIO

import pycdlib
import yaml

from .. import keys
from ..errors import RavelError
from ..model.blueprint import DEFAULT_USER
from ..paths import Paths, private_dir
from ..plan.app import AppPlan
from ..render.seed import ISO_NAMES, VOLUME_ID, SeedFiles, part_type, seed_files

SCHEMA_TIMEOUT = 30.0  # seconds for one `cloud-init schema` run (it takes about 0.5 s)


@dataclass(frozen=True)
class Seed:
    path: str  # the ISO on this machine
    user: str  # whom ravel logs in as
    host_key_public: str  # the guest's pinned ed25519 host key, "ssh-ed25519 AAAA... comment"
    instance_id: str


def instance_id(app: str, vm: str, host_key_public: str) -> str:
    """New with every new guest key, i.e. when the VM is re-created; stable otherwise."""
    return f"{app}-{vm}-{hashlib.sha256(host_key_public.encode()).hexdigest()[:12]}"


def seeds_dir(paths: Paths, app: str) -> Path:
    return paths.app_data(app) / "seeds"


def ensure_seeds(paths: Paths, ap: AppPlan) -> dict[str, Seed]:
    """The seed of every VM with `cloud_init` (VM name -> Seed), written only when missing."""
    keydir = keys.directory(paths.state)
    out: dict[str, Seed] = {}
    login_key: str | None = None
    for vm in ap.vms:
        ci = vm.cloud_init
        if ci is None:
            continue
        if login_key is None:
            login_key = keys.user_key(keydir)[1]
        pair = keys.guest_key(keydir, ap.app, vm.name)
        iid = instance_id(ap.app, vm.name, pair.public_line)
        text = ci.user_data if ci.user_data_file is None else read_user_data(vm.name, ci.user_data_file)
        files = seed_files(ap, vm.name, iid, login_key, pair, text)
        path = write_seed(seeds_dir(paths, ap.app), vm.name, files)
        out[vm.name] = Seed(str(path), vm.login or DEFAULT_USER, pair.public_line, iid)
    return out


def planned_seeds(paths: Paths, ap: AppPlan) -> dict[str, Seed]:
    """The seeds `ensure_seeds` would give, read-only (`publish --dry-run`): the same path for
    a VM whose key exists, and a path no seed has for one that would get a new key (its VM
    is new, so its argv differs anyway)."""
    keydir = keys.directory(paths.state)
    login = keys.existing(keydir, "", None, "id")
    out: dict[str, Seed] = {}
    for vm in ap.vms:
        ci = vm.cloud_init
        if ci is None:
            continue
        pair = keys.existing(keydir, "guestkeys", ap.app, vm.name)
        if pair is None or login is None:
            out[vm.name] = Seed(str(seeds_dir(paths, ap.app) / f"{vm.name}-new.iso"), vm.login or DEFAULT_USER, "", "")
            continue
        iid = instance_id(ap.app, vm.name, pair.public_line)
        text = ci.user_data if ci.user_data_file is None else read_user_data(vm.name, ci.user_data_file)
        files = seed_files(ap, vm.name, iid, login.public_line, pair, text)
        path = seeds_dir(paths, ap.app) / f"{vm.name}-{files.digest()[:16]}.iso"
        out[vm.name] = Seed(str(path), vm.login or DEFAULT_USER, pair.public_line, iid)
    return out


def forget_seed(paths: Paths, app: str, vm: str) -> None:
    """Remove a VM's seeds and its guest key, once the VM is gone."""
    folder = seeds_dir(paths, app)
    if folder.is_dir():
        for p in folder.iterdir():
            if _is_seed_of(p.name, vm):
                p.unlink(missing_ok=True)
    keys.forget_guest_key(keys.directory(paths.state), app, vm)


def read_user_data(vm: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RavelError(f"VM {vm}: user-data {path} is not UTF-8 text") from None
    except OSError as e:
        raise RavelError(f"VM {vm}: cannot read user-data {path}: {e.strerror or e}") from None


def _is_seed_of(name: str, vm: str) -> bool:
    return re.fullmatch(re.escape(vm) + r"-[0-9a-f]{16}\.iso", name) is not None


def iso_image(files: SeedFiles, out: BinaryIO) -> None:
    """Write the NoCloud volume: label `cidata`, Rock Ridge and Joliet names (lowercase, dashes)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=VOLUME_ID, joliet=3, rock_ridge="1.09")
    for name, data in files.files().items():
        iso.add_fp(io.BytesIO(data), len(data), ISO_NAMES[name], rr_name=name, joliet_path=f"/{name}")
    iso.write_fp(out)
    iso.close()


def write_seed(folder: Path, vm: str, files: SeedFiles) -> Path:
    """The seed's ISO in `folder`, named by its contents: written (0600, atomically) only when
    missing; the VM's other seeds are removed."""
    private_dir(folder)
    path = folder / f"{vm}-{files.digest()[:16]}.iso"
    if not path.exists():
        tmp = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                iso_image(files, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    for p in folder.iterdir():
        if p != path and _is_seed_of(p.name, vm):
            p.unlink(missing_ok=True)
    return path


# ---- the user's user-data, checked before publishing ----

def cloud_init_exe() -> str | None:
    """Debian's `cloud-init` (package cloud-init, in `make setup`), if installed here."""
    return shutil.which("cloud-init")


def check_user_data(text: str) -> list[str]:
    """What is wrong with the user's user-data (empty: nothing). `#cloud-config` goes through
    `cloud-init schema` when it is installed (YAML checks alone otherwise); other part types
    need a first line cloud-init knows; a MIME multipart is checked part by part."""
    return list(_check(text))


@functools.lru_cache(maxsize=64)  # VMs of one `count` share their user-data
def _check(text: str) -> tuple[str, ...]:
    ctype = part_type(text)
    if ctype is None:
        first = text.lstrip().split("\n", 1)[0][:60]
        return ((f"user-data must start with a cloud-init header (#cloud-config, #!, #cloud-boothook, "
                 f"#include, ... or a MIME multipart), not {first!r}"),)
    if ctype == "multipart/mixed":
        return tuple(_check_mime(text))
    return tuple(_check_part(text, ctype))


def _check_part(text: str, ctype: str) -> list[str]:
    if ctype == "text/cloud-config":
        return _check_cloud_config(text)
    if ctype == "text/cloud-config-archive":
        doc, problems = _load_yaml(text)
        if not problems and not isinstance(doc, list):
            problems.append("a #cloud-config-archive must be a YAML list of parts")
        return problems
    if ctype == "text/cloud-config-jsonp":
        try:
            doc = json.loads(text.lstrip().split("\n", 1)[1] if "\n" in text.lstrip() else "")
        except json.JSONDecodeError as e:
            return [f"line {e.lineno + 1}, column {e.colno}: {e.msg} (#cloud-config-jsonp is a JSON patch)"]
        return [] if isinstance(doc, list) else ["a #cloud-config-jsonp must be a JSON patch (a list)"]
    if ctype == "text/jinja2":
        rest = text.lstrip().split("\n", 1)[1] if "\n" in text.lstrip() else ""
        if part_type(rest) in (None, "multipart/mixed", "text/jinja2"):
            return [("after `## template: jinja`, the next line must be a cloud-init header "
                     "(#cloud-config, #!, ...)")]
    return []


def _check_mime(text: str) -> list[str]:
    msg = message_from_string(text.lstrip())
    if not msg.is_multipart():
        return ["user-data starting with MIME headers must be a MIME multipart message"]
    problems = []
    for i, part in enumerate(p for p in msg.walk() if not p.is_multipart()):
        ctype = part.get_content_type()
        payload = part.get_payload(decode=True) or b""
        try:
            body = payload.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"MIME part {i + 1} ({ctype}) is not UTF-8 text")
            continue
        if ctype in ("text/plain", "text/x-not-multipart"):  # cloud-init types it by its first line
            ctype = part_type(body) or ctype
        name = part.get_filename() or ctype
        problems += [f"MIME part {i + 1} ({name}): {p}" for p in _check_part(body, ctype)]
    return problems


def _load_yaml(text: str) -> tuple[object, list[str]]:
    try:
        return yaml.safe_load(text), []
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return None, [f"{where}{e.problem or e.context or 'invalid YAML'}"]
    except yaml.YAMLError as e:
        return None, [f"invalid YAML: {e}"]


def _check_cloud_config(text: str) -> list[str]:
    doc, problems = _load_yaml(text)
    if problems:
        return problems
    if not isinstance(doc, dict):
        return ["a #cloud-config must be a YAML mapping of keys (e.g. `packages: [...]`)"]
    exe = cloud_init_exe()
    if exe is None:
        return []  # YAML checks alone
    try:
        p = subprocess.run([exe, "schema", "--config-file", "/dev/stdin"], input=text, check=False,
                           capture_output=True, text=True, timeout=SCHEMA_TIMEOUT)
    except (subprocess.TimeoutExpired, OSError):
        return []  # the schema could not be checked here; the YAML is fine
    if p.returncode == 0:
        return []
    # errors only: deprecations (also printed) do not stop cloud-init
    lines = [line.strip() for line in p.stderr.splitlines()
             if line.strip() and line.strip() != "Error:" and not line.startswith("Cloud config schema deprecations")]
    lines = [line.removeprefix("Cloud config schema errors:").strip() for line in lines]
    return [f"cloud-init schema: {line}" for line in lines] or \
        [f"cloud-init schema failed (exit {p.returncode})"]
