"""The checks of `ravel ssh/exec/cp/vnc/ssh-config/inventory` against a running app of real
Debian guests, shared by the namespace lab (test_real_guests.py) and the SSH-mode lab
(test_guest_access_ssh.py): the same assertions on both ways of reaching hosts."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, Ravel

RUN_SH = b"#!/bin/sh\necho hi\n"


def run(r: Ravel, *args: str, timeout: float = 120, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """The CLI with bytes in and out (a guest's output is not text)."""
    p = subprocess.run([sys.executable, "-m", "ravel", *args], capture_output=True, timeout=timeout, env=r.env(),
                       cwd=ROOT, input=input, stdin=None if input is not None else subprocess.DEVNULL)
    assert b"Traceback" not in p.stderr, p.stderr.decode(errors="replace")
    return p


def popen(r: Ravel, *args: str, text: bool = False) -> subprocess.Popen:
    """The CLI in the background, with Ctrl-C as a terminal would deliver it: a shell that
    starts a job in the background leaves SIGINT ignored for it, and Python keeps it so."""
    return subprocess.Popen([sys.executable, "-m", "ravel", *args], env=r.env(), cwd=ROOT, text=text,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def ssh_runs_commands_with_their_output_and_status(r: Ravel, app: str, vms: tuple[str, ...]) -> None:
    for vm in vms:
        p = run(r, "ssh", app, vm, "--", "hostname")
        assert (p.returncode, p.stdout) == (0, f"{vm}\n".encode()), p.stderr
    vm = vms[0]
    p = run(r, "ssh", app, vm, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (p.returncode, p.stdout, p.stderr) == (7, b"out\n", b"err\n")
    p = run(r, "ssh", app, vm, "--", "ls /etc | grep -c host")  # one word: a shell command line
    assert p.returncode == 0 and int(p.stdout) >= 2
    # 10 MiB of binary stdout, byte for byte
    p = run(r, "ssh", app, vm, "--", "sh", "-c", "head -c 10485760 /dev/urandom | tee /tmp/blob | sha256sum >&2; cat /tmp/blob")
    assert p.returncode == 0 and len(p.stdout) == 10 << 20, (p.returncode, len(p.stdout))
    assert hashlib.sha256(p.stdout).hexdigest() == p.stderr.split()[0].decode()


def ssh_is_interactive_under_a_pty(r: Ravel, app: str, vm: str) -> None:
    import pexpect

    child = pexpect.spawn(sys.executable, ["-m", "ravel", "ssh", app, vm], env={**r.env(), "TERM": "xterm"},
                          cwd=str(ROOT), timeout=60, dimensions=(24, 80))
    try:
        child.expect(r"\$ ")
        child.sendline("echo $((6*7))")
        child.expect("42")
        child.setwinsize(33, 120)  # the window size reaches the guest
        child.sendline("stty size")
        child.expect("33 120")
        child.sendline("sleep 100; echo not-interrupted")
        time.sleep(1)
        started = time.monotonic()
        child.sendintr()  # Ctrl-C: the guest's sleep ends, not ravel
        child.expect(r"\$ ")
        assert time.monotonic() - started < 20
        child.sendline("echo still-here")
        child.expect("still-here")
        child.sendline("exit 5")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 5, (child.exitstatus, child.signalstatus)


def a_changed_guest_key_is_refused_and_nothing_sent(r: Ravel, app: str, vm: str) -> None:
    from ravel import keys
    from ravel.paths import paths
    from ravel.run.sessions import open_state

    state = open_state(paths({"RAVEL_HOME": str(r.home)}))
    try:
        rec = next(v for v in state.vms(app) if v.name == vm)
        state.put_vm(app, vm, rec.host, rec.state, {**rec.detail, "host_key": keys.generate("impostor").public_line})
        try:
            p = run(r, "ssh", app, vm, "--", "touch", "/tmp/sent-anyway")
            assert p.returncode == 5 and b"HOST KEY MISMATCH" in p.stderr, p.stderr
            p = run(r, "cp", str(ROOT / "README.md"), f"{app}:{vm}:/tmp/sent-anyway")
            assert p.returncode == 5 and b"HOST KEY MISMATCH" in p.stderr, p.stderr
        finally:
            state.put_vm(app, vm, rec.host, rec.state, rec.detail)
    finally:
        state.close()
    assert run(r, "exec", app, vm, "--", "ls", "/tmp/sent-anyway").returncode != 0  # nothing ran


def exec_works_with_the_network_down(r: Ravel, app: str, vm: str) -> None:
    p = run(r, "exec", app, vm, "--", "sh", "-c", "echo out; echo err >&2; exit 4")
    assert (p.returncode, p.stdout, p.stderr) == (4, b"out\n", b"err\n"), p.stderr
    p = run(r, "exec", app, vm, "--", "wc", "-c", input=b"x" * 100000)  # stdin when it is not a terminal
    assert p.stdout.split() == [b"100000"], p
    nic = run(r, "exec", app, vm, "--", "sh", "-c", "ip -o -4 route show default | awk '{print $5}'").stdout.decode().strip()
    assert nic, "no default route"
    assert run(r, "exec", app, vm, "--", "ip", "link", "set", nic, "down").returncode == 0
    try:
        p = run(r, "exec", app, vm, "--", "cat", "/sys/class/net/" + nic + "/operstate")
        assert p.stdout.strip() == b"down"
        assert run(r, "exec", app, vm, "--", "hostname").stdout == f"{vm}\n".encode()
        p = run(r, "exec", app, vm, "--timeout", "2", "--", "sleep", "30")
        assert p.returncode == 6 and b"did not finish within 2 s" in p.stderr
    finally:
        assert run(r, "exec", app, vm, "--", "ip", "link", "set", nic, "up").returncode == 0
    deadline = time.monotonic() + 60
    while run(r, "ssh", app, vm, "--", "true", timeout=60).returncode != 0:
        assert time.monotonic() < deadline, "SSH did not come back after the link came up"
        time.sleep(1)


def cp_round_trips_a_tree_with_modes(r: Ravel, app: str, vm: str, tmp: Path) -> None:
    src = tmp / "tree"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "run.sh").write_bytes(RUN_SH)
    (src / "run.sh").chmod(0o751)
    (src / "sub" / "data.bin").write_bytes(os.urandom(3 << 20))
    (src / "sub" / "deeper" / "secret").write_bytes(b"s")
    (src / "sub" / "deeper" / "secret").chmod(0o600)
    assert run(r, "cp", str(src), f"{app}:{vm}:/tmp/").returncode == 0  # into an existing directory
    listing = run(r, "ssh", app, vm, "--", "sh", "-c", "cd /tmp/tree && find . -type f -exec stat -c '%a %s %n' {} + | sort")
    assert listing.stdout.decode().splitlines() == ["600 1 ./sub/deeper/secret", f"644 {3 << 20} ./sub/data.bin",
                                                     f"751 {len(RUN_SH)} ./run.sh"], listing
    back = tmp / "back"
    back.mkdir()
    assert run(r, "cp", f"{app}:{vm}:/tmp/tree", str(back)).returncode == 0
    for f in ("run.sh", "sub/data.bin", "sub/deeper/secret"):
        assert (back / "tree" / f).read_bytes() == (src / f).read_bytes()
        assert (back / "tree" / f).stat().st_mode & 0o777 == (src / f).stat().st_mode & 0o777
    one = tmp / "one.bin"
    assert run(r, "cp", f"{app}:{vm}:/tmp/tree/sub/data.bin", str(one)).returncode == 0
    assert one.read_bytes() == (src / "sub" / "data.bin").read_bytes()
    assert not [p for p in tmp.rglob(".*.part")]


def an_interrupted_copy_leaves_no_partial_file(r: Ravel, app: str, vm: str, tmp: Path) -> None:
    big = tmp / "big.bin"
    with big.open("wb") as fh:
        fh.truncate(400 << 20)  # sparse here, 400 MiB on the wire: it takes longer than a second
    p = popen(r, "cp", str(big), f"{app}:{vm}:/tmp/big.bin")
    deadline = time.monotonic() + 60
    while b".big.bin." not in run(r, "exec", app, vm, "--", "ls", "-a", "/tmp").stdout:
        assert time.monotonic() < deadline and p.poll() is None, "the copy never started"
        time.sleep(0.3)
    p.send_signal(signal.SIGTERM)  # a cancelled CI job: ends like Ctrl-C, through the clean-up
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and b"interrupted" in err, err
    left = run(r, "exec", app, vm, "--", "ls", "-a", "/tmp").stdout.decode().split()
    assert not [f for f in left if "big.bin" in f], left
    # killed outright (no clean-up can run here): its ssh sees the bytes end, the guest's script
    # removes what arrived, and the connection ends
    p = popen(r, "cp", str(big), f"{app}:{vm}:/tmp/big.bin")
    deadline = time.monotonic() + 60
    while b".big.bin." not in run(r, "exec", app, vm, "--", "ls", "-a", "/tmp").stdout:
        assert time.monotonic() < deadline and p.poll() is None, "the copy never started"
        time.sleep(0.3)
    p.kill()
    p.wait(30)
    known = str(r.home / "state" / "known_guests" / app)

    def clients() -> list[str]:
        return [d for d in os.listdir("/proc") if d.isdigit() and _cmdline(d).startswith("ssh ") and known in _cmdline(d)]

    deadline = time.monotonic() + 30
    while clients() or b"big.bin" in run(r, "exec", app, vm, "--", "ls", "-a", "/tmp").stdout:
        assert time.monotonic() < deadline, (f"left after ravel cp was killed: ssh {clients()}, "
                                             f"{run(r, 'exec', app, vm, '--', 'ls', '-a', '/tmp').stdout!r}")
        time.sleep(0.3)


def _cmdline(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ssh_config_and_inventory_serve_openssh_and_ansible(r: Ravel, app: str, vm: str, tmp: Path) -> None:
    config = tmp / "ssh_config"
    config.write_bytes(run(r, "ssh-config", app).stdout)
    p = subprocess.run(["ssh", "-F", str(config), f"{vm}.{app}", "hostname"], capture_output=True, timeout=120,
                       stdin=subprocess.DEVNULL)  # the system's OpenSSH client, nothing else set up
    assert (p.returncode, p.stdout) == (0, f"{vm}\n".encode()), p.stderr
    inv = run(r, "inventory", app, "--format", "json")
    doc = json.loads(inv.stdout)
    assert f"{vm}.{app}" in doc["all"]["hosts"]
    ansible = Path(sys.executable).with_name("ansible")
    p = subprocess.run(["bash", "-c", f"{ansible} -i <({sys.executable} -m ravel inventory {app}) all -m ping -o"],
                       capture_output=True, text=True, timeout=300, env=r.env(ANSIBLE_HOST_KEY_CHECKING="True"),
                       cwd=ROOT, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and p.stdout.count("SUCCESS") == len(doc["all"]["hosts"]), p.stdout + p.stderr


def vnc_forwards_the_console_until_ctrl_c(r: Ravel, app: str, vm: str) -> None:
    p = popen(r, "vnc", app, vm, text=True)
    try:
        url = p.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("vnc://127.0.0.1:"), url
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.settimeout(10)
            assert s.recv(12) == b"RFB 003.008\n"
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    with socket.socket() as s:  # the port is closed again
        assert s.connect_ex(("127.0.0.1", port)) != 0


def cp_by_agent_round_trips_a_tree(r: Ravel, app: str, vm: str, tmp: Path) -> None:
    src = tmp / "agenttree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "data.bin").write_bytes(os.urandom(5 << 20))  # more than one agent read/write
    (src / "run.sh").write_bytes(RUN_SH)
    (src / "run.sh").chmod(0o750)
    assert run(r, "cp", "--agent", str(src), f"{app}:{vm}:/var/tmp/").returncode == 0
    p = run(r, "exec", app, vm, "--", "sh", "-c", "cd /var/tmp/agenttree && stat -c '%a %s %n' run.sh sub/data.bin "
                                                  "&& sha256sum sub/data.bin")
    lines = p.stdout.decode().splitlines()
    assert lines[:2] == [f"750 {len(RUN_SH)} run.sh", f"644 {5 << 20} sub/data.bin"], lines
    assert lines[2].split()[0] == hashlib.sha256((src / "sub" / "data.bin").read_bytes()).hexdigest()
    back = tmp / "agentback"
    back.mkdir()
    assert run(r, "cp", "--agent", f"{app}:{vm}:/var/tmp/agenttree", str(back)).returncode == 0
    for f in ("run.sh", "sub/data.bin"):
        assert (back / "agenttree" / f).read_bytes() == (src / f).read_bytes()
    assert (back / "agenttree" / "run.sh").stat().st_mode & 0o777 == 0o750
    assert run(r, "cp", "--agent", f"{app}:{vm}:/etc/hostname", str(tmp / "hn")).returncode == 0
    assert (tmp / "hn").read_text() == f"{vm}\n"
    assert not [p for p in tmp.rglob(".*.part")]
