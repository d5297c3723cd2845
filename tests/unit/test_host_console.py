"""The host runtime's console relay: stdin/stdout <-> a VM's serial socket, both ways."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_relay_passes_bytes_both_ways_and_ends_with_stdin(tmp_path):
    path = str(tmp_path / "vm.serial")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    got = []

    def guest():
        conn, _ = server.accept()
        conn.sendall(b"login: ")
        got.append(conn.recv(100))
        conn.sendall(b"\x1b[0m\xffbinary-ok")
        conn.close()

    t = threading.Thread(target=guest)
    t.start()
    p = subprocess.Popen([sys.executable, "-m", "ravel.host", "console", path], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    p.stdin.write(b"root\n")
    p.stdin.flush()
    t.join(20)
    out, err = p.communicate(timeout=30)  # the guest hung up: the relay ends
    assert p.returncode == 0, err
    assert got == [b"root\n"]
    assert out == b"login: \x1b[0m\xffbinary-ok"


def test_relay_to_a_missing_socket_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "ravel.host", "console", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=30, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert p.returncode == 1 and p.stderr.startswith("ravel.host console: cannot connect to")
