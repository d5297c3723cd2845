"""The local provider's SSH mode: one sshd (Debian's openssh-server) per host namespace.

A host's sshd gets what a cloud host gets from its boot data: the host key ravel made for it
(so ravel's first connection is already verified) and ravel's login key, nothing else; no
passwords. Its files live in the app's run dir, made once when the host is first made: like
boot data, they are not rewritten on later runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import EnvironmentProblem, ProviderError

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it must be started by absolute path
PRIVSEP_DIR = Path("/run/sshd")  # compiled into Debian's sshd; made by systemd at boot, if at all
START_TIMEOUT_S = 10.0
STOP_WAIT_S = 5.0


@dataclass(frozen=True)
class SshdFiles:
    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.dir / "host_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.dir / "authorized_keys"

    @property
    def pidfile(self) -> Path:
        return self.dir / "sshd.pid"

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"


def files_for(app_run: Path, host: str) -> SshdFiles:
    return SshdFiles(app_run / f"sshd-{host}")


def sshd_config(f: SshdFiles, address: str, port: int = 22) -> str:
    """The whole configuration (no Include of the machine's own sshd_config)."""
    return "\n".join([
        "# made by ravel: this host's sshd, reachable only on the underlay",
        f"ListenAddress {address}:{port}",
        f"HostKey {f.host_key}",
        "HostKeyAlgorithms ssh-ed25519",
        f"AuthorizedKeysFile {f.authorized_keys}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "AllowUsers root",
        "UsePAM no",
        "StrictModes yes",
        f"PidFile {f.pidfile}",
        "Subsystem sftp internal-sftp",
        # direct-tcpip only (`ravel ssh`, `ravel proxy`: a guest reached from its host); no -R listeners
        "AllowTcpForwarding local",
        "PermitListen none",
        "AllowAgentForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "PrintMotd no",
        # bash started by sshd reads ~/.bashrc unless it is a nested shell: this machine's
        # root shares its home with every local host, and its login set-up (pyenv, cargo...)
        # is none of a host's business, nor worth 0.3 s on every command
        "SetEnv SHLVL=1",
        "",
    ])


def check_installed() -> None:
    if not os.access(SSHD, os.X_OK):
        raise EnvironmentProblem(f"{SSHD} is not installed (the local provider's SSH mode runs it in every host)",
                                 hint="apt-get install openssh-server")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def install(f: SshdFiles, address: str, host_key_private: str, user_key_public: str) -> None:
    """Write the host's sshd files once (a host's boot data is not re-applied later)."""
    if f.config.exists():
        return
    f.dir.parent.mkdir(parents=True, exist_ok=True)
    f.dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(f.dir, 0o700)  # StrictModes: sshd refuses keys in a directory others may write
    _write_private(f.host_key, host_key_private)
    _write_private(f.authorized_keys, user_key_public.strip() + "\n")
    tmp = f.config.with_suffix(".tmp")
    tmp.write_text(sshd_config(f, address))
    os.replace(tmp, f.config)  # written last: its presence means the rest is there


def running_pid(f: SshdFiles) -> int | None:
    """The pid of this host's sshd, if it is alive and really that sshd."""
    try:
        pid = int(f.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # sshd retitles itself ("sshd: /usr/sbin/sshd -f CONFIG ... [listener]"): match the text
    return pid if b"sshd" in cmdline and str(f.config).encode() in cmdline else None


def start(f: SshdFiles, namespace: str, host: str) -> int:
    """Start the host's sshd inside its namespace, unless it runs; returns its pid."""
    pid = running_pid(f)
    if pid is not None:
        return pid
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    f.pidfile.unlink(missing_ok=True)
    argv = ["ip", "netns", "exec", namespace, SSHD, "-f", str(f.config), "-E", str(f.log)]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT_S,
                           stdin=subprocess.DEVNULL, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise ProviderError(f"{host}: sshd did not start within {START_TIMEOUT_S:.0f} s") from None
    if p.returncode != 0:
        raise ProviderError(f"{host}: sshd would not start: {_tail(p.stderr) or _tail(_read(f.log))}")
    # sshd writes its pid file after it detaches: wait for it, briefly and boundedly
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        pid = running_pid(f)
        if pid is not None:
            return pid
        time.sleep(0.02)
    raise ProviderError(f"{host}: sshd started but wrote no pid file: {_tail(_read(f.log)) or 'no log'}")


def stop(f: SshdFiles) -> None:
    """End this host's sshd by its pid (TERM, a bounded wait, then KILL); fine if not running."""
    pid = running_pid(f)
    if pid is not None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + STOP_WAIT_S
            while time.monotonic() < deadline and running_pid(f) == pid:
                time.sleep(0.02)
            if running_pid(f) != pid:
                break


def remove(f: SshdFiles) -> None:
    """Stop the host's sshd and delete its files (the host key copy among them)."""
    stop(f)
    shutil.rmtree(f.dir, ignore_errors=True)
    try:
        f.dir.parent.rmdir()  # the app's run dir, made for these files, once nothing else is in it
    except OSError:
        pass


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
