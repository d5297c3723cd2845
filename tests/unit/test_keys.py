"""ravel's SSH keys: 0600 from the start, made once even when many callers race."""

from __future__ import annotations

import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from ravel.keys import host_key, user_key


def test_user_key_is_private_and_stable(tmp_path):
    path, pub = user_key(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pub.startswith("ssh-ed25519 ")
    assert user_key(tmp_path) == (path, pub)


def test_concurrent_threads_and_processes_agree_on_one_key(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: host_key(tmp_path, "app", "host-1").public_line, range(16)))
    code = f"from pathlib import Path; from ravel.keys import host_key; print(host_key(Path({str(tmp_path)!r}), 'app', 'host-2').public_line)"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    others = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(keys) == 1 and len(others) == 1
    assert host_key(tmp_path, "app", "host-2").public_line in others
    files = sorted(p.name for p in (tmp_path / "hostkeys" / "app").iterdir())
    assert files == ["host-1_ed25519", "host-1_ed25519.pub", "host-2_ed25519", "host-2_ed25519.pub"]
    for f in (tmp_path / "hostkeys" / "app").glob("*_ed25519"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
