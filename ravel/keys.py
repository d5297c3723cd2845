"""SSH keys ravel makes itself: one host key per host and one per cloud-init guest (pinned
before first contact) and the user key ravel logs in with. Private keys are written 0600 and
never stored in the state."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str  # "-----BEGIN OPENSSH PRIVATE KEY-----..."
    public_line: str  # "ssh-ed25519 AAAA... comment"


def generate(comment: str = "ravel") -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return KeyPair(private, f"{public} {comment}")


def write_private(path: Path, pair: KeyPair) -> bool:
    """Create a key pair file 0600 from the first byte, atomically and only once.

    The public half is written first and the private key appears last by a hard link, which
    fails if another process got there first: concurrent callers (threads, or two ravel
    processes on one RAVEL_HOME) then all use the one key that won. Returns True if ours won.
    """
    _private_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pair.private_openssh.encode())
    finally:
        os.close(fd)
    try:
        if path.exists():
            return False
        pub_tmp = tmp.with_suffix(".pub")
        fd = os.open(pub_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # like all of the state
        with os.fdopen(fd, "w") as f:
            f.write(pair.public_line + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pub_tmp.unlink()
            return False
        os.replace(pub_tmp, path.with_suffix(".pub"))
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _private_dirs(d: Path) -> None:
    """`d` and every missing directory above it, 0700 (mkdir's mode passes through the umask)."""
    missing = []
    while not d.is_dir() and d.parent != d:
        missing.append(d)
        d = d.parent
    for m in reversed(missing):
        m.mkdir(mode=0o700, exist_ok=True)
        os.chmod(m, 0o700)


def _wait_public(path: Path) -> str:
    # the winner links the private key, then renames the public half into place
    for _ in range(200):
        pub = path.with_suffix(".pub")
        if pub.exists():
            return pub.read_text().strip()
        time.sleep(0.01)
    raise FileNotFoundError(f"{path.with_suffix('.pub')} did not appear")


def user_key(directory: Path) -> tuple[Path, str]:
    """ravel's own login key for hosts (made once per RAVEL_HOME): (private key path, public line)."""
    path = directory / "id_ed25519"
    if not path.exists():
        write_private(path, generate("ravel-user"))
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return path, _wait_public(path)


def host_key(directory: Path, app: str, host: str) -> KeyPair:
    """The host key for one host, made once and kept (0600) so the host can be re-verified."""
    return _pinned(directory, "hostkeys", app, host)


def guest_key(directory: Path, app: str, vm: str) -> KeyPair:
    """The SSH host key of one cloud-init guest, made once and kept (0600) like a host's: ravel's
    seed installs it in the guest, so the guest's SSH is pinned, never learned."""
    return _pinned(directory, "guestkeys", app, vm)


def _pinned(directory: Path, kind: str, app: str, name: str) -> KeyPair:
    path = directory / kind / app / f"{name}_ed25519"
    if not path.exists():
        write_private(path, generate(f"ravel-{app}-{name}"))
    return KeyPair(path.read_text(), _wait_public(path))


def existing(directory: Path, kind: str, app: str | None, name: str) -> KeyPair | None:
    """A key made before, or None; never makes one (`ravel publish --dry-run` reads, never
    writes). `kind`: "guestkeys", "hostkeys", or "" with `app` None for ravel's login key."""
    path = directory / kind / app / f"{name}_ed25519" if app else directory / f"{name}_ed25519"
    pub = path.with_suffix(".pub")
    if not (path.exists() and pub.exists()):
        return None
    return KeyPair(path.read_text(), pub.read_text().strip())


def directory(state: Path) -> Path:
    """Where a ravel set-up keeps its keys: next to the state (a 0700 directory), never in it."""
    return state / "keys"


def forget_host_key(directory: Path, app: str, host: str) -> None:
    """Remove a host's key once the host is gone (and the app's key folder once empty)."""
    _forget(directory, "hostkeys", app, host)


def forget_guest_key(directory: Path, app: str, vm: str) -> None:
    """Remove a guest's key once its VM is gone (a re-created VM gets a new key, and so a new
    cloud-init instance-id), and the app's folder once empty."""
    _forget(directory, "guestkeys", app, vm)


def _forget(directory: Path, kind: str, app: str, name: str) -> None:
    folder = directory / kind / app
    for path in (folder / f"{name}_ed25519", folder / f"{name}_ed25519.pub"):
        path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass
