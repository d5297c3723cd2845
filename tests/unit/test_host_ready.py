"""The host runtime's readiness checks (ravel/host/ready.py), against real files and sockets."""

from __future__ import annotations

import socket
import threading

from ravel.host import ready
from ravel.host.resume import RESUMED_NOTE


def check(kind, tmp_path, log_text="", leases="", **extra):
    log = tmp_path / "vm.log"
    log.write_text(log_text)
    return ready.check({"vm": "vm", "kind": kind, "log": str(log), **extra}, ready.this_boot(str(log)), leases)


def test_console_default_markers_and_a_pattern(tmp_path):
    assert check("console", tmp_path, "boot\nvm login: ") == (True, "matched")
    assert check("console", tmp_path, "boot\n")[0] is False
    assert check("console", tmp_path, "")[1] == "no console output yet"
    assert check("console", tmp_path, "Started OpenSSH\n", pattern=r"^Started Open")[0] is True
    assert check("console", tmp_path, "x Started OpenSSH\n", pattern=r"^Started Open")[0] is False


def test_console_sees_only_what_this_boot_printed(tmp_path):
    log = tmp_path / "vm.log"
    log.write_text("old boot\nvm login: \n")
    ready.mark_boot(str(log))  # the VM starts again: the old login prompt is history
    with log.open("a") as fh:
        fh.write("\x1b[0;1mbooting\x1b[0m again\n")
    text = ready.this_boot(str(log))
    assert text == "\x1b[0;1mbooting\x1b[0m again\n"
    assert ready.check({"vm": "vm", "kind": "console"}, text, "")[0] is False
    assert ready.last_line(text) == "booting again"  # terminal escapes stripped


def test_boot_only_checks_pass_for_a_resumed_vm(tmp_path):
    for kind in ("console", "lease", "link"):
        assert check(kind, tmp_path, f"{RESUMED_NOTE} from /x\n", mac="52:54:00:00:00:01", tap="nope")[0] is True
    assert check("none", tmp_path) == (True, "not checked")


def test_lease(tmp_path):
    leases = "1733500000 52:54:00:aa:bb:cc 10.0.0.5 web *\n"
    assert check("lease", tmp_path, leases=leases, mac="52:54:00:AA:BB:CC")[0] is True
    assert check("lease", tmp_path, leases=leases, mac="52:54:00:aa:bb:cd") == (
        False, "no DHCP lease for 52:54:00:aa:bb:cd yet")


def test_link_reads_the_taps_received_frames():
    assert ready.tap_frames("lo") is not None  # /proc/net/dev of this namespace
    assert ready.tap_frames("no-such-tap") is None


def serve(payload: bytes):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def one():
        conn, _ = srv.accept()
        conn.sendall(payload)
        conn.close()

    threading.Thread(target=one, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_ssh_needs_a_banner_and_tcp_only_a_connection():
    srv, port = serve(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n")
    with srv:
        assert ready.probe_tcp("127.0.0.1", port, banner=True) == (True, "SSH-2.0-OpenSSH_9.2p1 Debian")
    srv, port = serve(b"HTTP/1.1 400\r\n")
    with srv:
        ok, seen = ready.probe_tcp("127.0.0.1", port, banner=True)
        assert not ok and "not an SSH banner" in seen
    srv, port = serve(b"")
    with srv:
        assert ready.probe_tcp("127.0.0.1", port, banner=False)[0] is True
    with socket.socket() as unused:  # bound, never listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        ok, seen = ready.probe_tcp("127.0.0.1", unused.getsockname()[1], banner=False)
    assert not ok and "refused" in seen.lower()


def test_ping_answers_on_loopback():
    assert ready.ping("127.0.0.1")[0] is True


def test_ssh_is_ready_only_with_the_pinned_host_key(tmp_path):
    """A real sshd (Debian's, from `make setup`) on 127.0.0.1 with a key ravel made: the check
    passes with that key pinned and fails with another (a guest cloud-init has not re-keyed)."""
    import os
    import subprocess
    import time

    from ravel import keys

    pair, other = keys.generate("guest"), keys.generate("old")
    key = tmp_path / "host_ed25519"
    keys.write_private(key, pair)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.makedirs("/run/sshd", exist_ok=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null", "-h", str(key), "-p", str(port),
                             "-o", "ListenAddress=127.0.0.1", "-o", f"PidFile={tmp_path}/sshd.pid"],
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # bounded: until it listens
            if ready.probe_tcp("127.0.0.1", port, banner=True)[0]:
                break
            time.sleep(0.05)
        assert ready.pinned_key("127.0.0.1", port, pair.public_line) == (True, "SSH answers with its pinned host key")
        ok, seen = ready.pinned_key("127.0.0.1", port, other.public_line)
        assert not ok and "shows another host key" in seen
    finally:
        sshd.terminate()
        sshd.wait(10)
