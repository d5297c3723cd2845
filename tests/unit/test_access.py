"""The pure parts of the ways into guests: OpenSSH options and config, the remote command rule,
`ravel cp`'s side parsing, the Ansible inventory, and the guest agent's wire handling."""

from __future__ import annotations

import base64
import json
import os
import shlex
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from ravel.access.agent import AgentError, GuestAgent
from ravel.access.channel import Link
from ravel.access.copy import parse
from ravel.access.guest import Guest
from ravel.access.inventory import group_name, render
from ravel.access.openssh import config, proxy_command, remote_command, ssh_argv
from ravel.errors import StateError
from ravel.access.guest import require_ssh
from ravel.providers.base import Host

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0wKn1g7+Y7xgDn2S2l7u8ZqUqXrS3yD0mhlGm4d9Hc"


def guest(vm: str = "web-1", via: str = "netns", **kw) -> Guest:
    base = dict(app="lab", vm=vm, host=Host("lab", "host-1", "rv-lab-host-1", "10.0.0.1", "u0", "/run/x"),
                provider=None, running=True, address="10.1.0.5", user="ravel", host_key=KEY,
                agent="/run/x/web-1.qga", vnc="/run/x/web-1.vnc", via=via)
    base.update(kw)
    return Guest(**base)  # type: ignore[arg-type]


def test_one_word_is_a_command_line_several_are_exact_arguments():
    assert remote_command([]) == []
    assert remote_command(["ls /etc | wc -l"]) == ["ls /etc | wc -l"]
    words = ["sh", "-c", "exit 7", "it's", "$HOME"]
    (line,) = remote_command(words)
    assert shlex.split(line) == words  # what the guest's shell sees


def test_proxy_command_names_the_state_and_escapes_percent():
    line = proxy_command(guest(), env={"RAVEL_HOME": "/tmp/a b%c"})
    assert line.endswith(" proxy lab web-1 %p --fdpass")
    assert "RAVEL_HOME='/tmp/a b%%c'" in line  # ssh expands %-tokens: a literal % is %%
    assert not line.startswith("exec")  # ssh adds its own exec
    assert proxy_command(guest(via="ssh"), env={}).endswith(" %p")  # no fd to hand over from an SSH host


def test_config_pins_the_guest_key_and_goes_through_ravel(tmp_path):
    text = config([guest(), guest("db", address=None), guest("win", host_key=None, user=None)],
                  tmp_path / "known", tmp_path / "id", env={})
    block = text.split("Host web-1.lab\n")[1].split("\n\n")[0]
    opts = dict(line.strip().split(" ", 1) for line in block.splitlines())
    assert opts["HostKeyAlias"] == "web-1.lab" and opts["StrictHostKeyChecking"] == "yes"
    assert opts["UserKnownHostsFile"] == str(tmp_path / "known") and opts["User"] == "ravel"
    assert opts["ProxyUseFdpass"] == "yes" and "ravel proxy lab web-1 %p" in opts["ProxyCommand"]
    assert "# db.lab: no SSH" in text and "# win.lab: no SSH" in text
    assert "Host db.lab" not in text


def test_a_config_openssh_itself_accepts(tmp_path):
    cfg = tmp_path / "cfg"
    cfg.write_text(config([guest(), guest("b", via="ssh")], tmp_path / "known", tmp_path / "id", env={}))
    out = subprocess.run(["ssh", "-G", "-F", str(cfg), "b.lab"], capture_output=True, text=True, check=True).stdout
    assert "hostkeyalias b.lab" in out and "stricthostkeychecking true" in out and "user ravel" in out


def test_ssh_argv_ends_with_the_alias_and_the_command(tmp_path):
    argv = ssh_argv(guest(), tmp_path / "k", tmp_path / "id", ["sh", "-c", "exit 7"], ["-L", "8080:localhost:80"])
    assert argv[:3] == ["ssh", "-F", "/dev/null"]
    assert argv[-5:-1] == ["-L", "8080:localhost:80", "--", "web-1.lab"]
    assert shlex.split(argv[-1]) == ["sh", "-c", "exit 7"]


def test_no_ssh_without_a_key_ravel_made():
    with pytest.raises(StateError, match="no SSH host key ravel made"):
        require_ssh(guest(host_key=None))
    with pytest.raises(StateError, match="no address"):
        require_ssh(guest(address=None))
    with pytest.raises(StateError, match="stopped"):
        require_ssh(guest(running=False))


@pytest.mark.parametrize("spec, want", [
    ("lab:web-1:/etc/hosts", ("lab", "web-1", "/etc/hosts")),
    ("lab:web-1:relative/path", ("lab", "web-1", "relative/path")),
    ("./a:b:c", (None, None, "./a:b:c")),
    ("/abs:x:y", (None, None, "/abs:x:y")),
    ("file.txt", (None, None, "file.txt")),
])
def test_cp_sides(spec, want):
    w = parse(spec)
    assert (w.app, w.vm, w.path) == want


def test_inventory_groups_and_formats():
    gs = [guest("web-1"), guest("web-2"), guest("db")]
    groups = {"web": ["web-1.lab", "web-2.lab"], group_name("back-end"): ["db.lab"]}
    doc = yaml.safe_load(render("lab", gs, groups, {"ansible_ssh_common_args": "-F /x"}, "yaml"))
    assert doc == json.loads(render("lab", gs, groups, {"ansible_ssh_common_args": "-F /x"}, "json"))
    assert doc["all"]["hosts"]["db.lab"] == {"ansible_host": "db.lab", "ansible_user": "ravel"}
    assert doc["all"]["children"]["back_end"]["hosts"] == {"db.lab": {}}
    ini = render("lab", gs, groups, {"ansible_ssh_common_args": "-F /x"}, "ini")
    assert "[web]\nweb-1.lab\nweb-2.lab" in ini and "ansible_ssh_common_args='-F /x'" in ini
    assert group_name("1st") == "_1st"


# -- the guest agent's wire ---------------------------------------------------------------------------

def _agent_peer(script):
    """A socket pair: one end for GuestAgent, the other served by `script(sock)` in a thread."""
    a, b = socket.socketpair()
    t = threading.Thread(target=script, args=(b,), daemon=True)
    t.start()
    return Link(a), t


def _lines(sock):
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield json.loads(line.lstrip(b"\xff"))


def test_sync_skips_stale_bytes_and_exec_passes_output_and_status():
    def peer(sock):
        sock.sendall(b'{"return": {"pid": 9}}\n')  # a reply an earlier client never read
        for msg in _lines(sock):
            cmd = msg["execute"]
            if cmd == "guest-sync-delimited":
                sock.sendall(b"\xff" + json.dumps({"return": msg["arguments"]["id"]}).encode() + b"\n")
            elif cmd == "guest-exec":
                assert msg["arguments"]["path"] == "cat" and base64.b64decode(msg["arguments"]["input-data"]) == b"in"
                sock.sendall(b'{"return": {"pid": 42}}\n')
            elif cmd == "guest-exec-status":
                sock.sendall(json.dumps({"return": {"exited": True, "exitcode": 3,
                                                    "out-data": base64.b64encode(b"\x00\xffout").decode(),
                                                    "err-data": base64.b64encode(b"err").decode()}}).encode() + b"\n")
        sock.close()

    link, _ = _agent_peer(peer)
    ga = GuestAgent(link, "vm1")
    ga.sync(timeout=5)
    done = ga.run(["cat"], b"in", timeout=5)
    assert (done.status, done.stdout, done.stderr) == (3, b"\x00\xffout", b"err")
    link.close()


def test_an_agent_that_does_not_answer_is_said_in_one_line():
    quiet = threading.Event()
    link, _ = _agent_peer(lambda sock: (sock.recv(100), quiet.wait(5)))  # reads, never answers
    with pytest.raises(AgentError, match="vm1: the guest agent did not answer guest-sync in time") as e:
        GuestAgent(link, "vm1").sync(timeout=0.5)
    assert "ravel ssh" in (e.value.hint or "")
    quiet.set()
    link.close()


def test_a_refused_command_names_the_vm_and_the_reason():
    def peer(sock):
        for msg in _lines(sock):
            if msg["execute"] == "guest-sync-delimited":
                sock.sendall(b"\xff" + json.dumps({"return": msg["arguments"]["id"]}).encode() + b"\n")
            else:
                sock.sendall(b'{"error": {"class": "GenericError", "desc": "Failed to execute child process"}}\n')

    link, _ = _agent_peer(peer)
    ga = GuestAgent(link, "vm1")
    ga.sync(timeout=5)
    with pytest.raises(AgentError, match="vm1: the guest agent refused guest-exec: Failed to execute"):
        ga.run(["nope"], None, timeout=5)
    link.close()


def test_the_known_hosts_file_is_private(tmp_path):
    from ravel.access.openssh import write_known_hosts
    from ravel.paths import paths

    p = write_known_hosts(paths({"RAVEL_HOME": str(tmp_path)}), "lab", [guest(), guest("b", host_key=None)])
    assert p.read_text() == f"web-1.lab {KEY}\n"
    assert p.stat().st_mode & 0o777 == 0o600 and p.parent.stat().st_mode & 0o777 == 0o700
    assert Path(p).exists()


# -- `ravel cp`'s scripts in the guest (copy.RECEIVE, copy.SEND), run by this machine's sh the way
# the guest's runs them


def _receive(dst: Path | str, data: bytes, md5: str, mode: str = "640", name: str = "src.bin",
             tag: str = "t1", cwd: Path | None = None, size: int | None = None) -> subprocess.CompletedProcess[bytes]:
    from ravel.access.copy import RECEIVE

    head = f"{md5} {len(data) if size is None else size} {mode}\n".encode()
    return subprocess.run(["sh", "-c", RECEIVE, "sh", str(dst), name, tag], input=head + data,
                          capture_output=True, timeout=30, cwd=cwd)


def test_receive_puts_the_file_in_place_with_its_mode_only_when_it_matches(tmp_path):
    import hashlib

    data = b"payload\n" * 1000
    md5 = hashlib.md5(data).hexdigest()
    dst = tmp_path / "f.bin"
    for mode in ("640", "600", "755", "4750", "644"):  # from umask, or by chmod (x and special bits)
        r = _receive(dst, data, md5, mode)
        assert r.returncode == 0, r.stderr
        assert dst.read_bytes() == data and f"{dst.stat().st_mode & 0o7777:o}" == mode
    # cut short (an interrupted copy closes stdin early), or changed on the way: not put in place,
    # the temporary file gone, the old file kept
    r = _receive(dst, data[:100], md5, size=len(data))
    assert r.returncode == 3 and r.stderr.startswith(b"got 100 bytes")
    # a file ending in zeros cut short: what arrived plus the room taken for it matches the MD5,
    # the count does not
    zeros = b"z" * 100 + bytes(8000)
    r = _receive(dst, zeros[:3000], hashlib.md5(zeros).hexdigest(), size=len(zeros))
    assert r.returncode == 3 and r.stderr.startswith(b"got 3000 bytes")
    assert _receive(dst, data.replace(b"p", b"q", 1), md5).returncode == 3
    r = _receive(dst, data + b"more", md5, size=len(data))  # grown meanwhile
    assert r.returncode == 3 and r.stderr.startswith(f"got {len(data) + 4} bytes".encode())
    assert dst.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
    # nothing arrived at all (the connection went before the header): an error, nothing made
    from ravel.access.copy import RECEIVE

    r = subprocess.run(["sh", "-c", RECEIVE, "sh", str(tmp_path / "g.bin"), "x", "t2"], input=b"",
                       capture_output=True, timeout=30)
    assert r.returncode == 5 and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_receive_into_a_directory_like_cp(tmp_path):
    import hashlib

    data = b"x" * 10
    md5 = hashlib.md5(data).hexdigest()
    (tmp_path / "d").mkdir()
    assert _receive(tmp_path / "d", data, md5, name="one.bin").returncode == 0
    assert _receive(f"{tmp_path / 'd'}/", data, md5, name="two.bin").returncode == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["one.bin", "two.bin"]
    r = _receive(f"{tmp_path / 'nodir'}/", data, md5)
    assert r.returncode == 4 and b"no such directory" in r.stderr
    (tmp_path / "d" / "sub").mkdir()
    r = _receive(tmp_path / "d", data, md5, name="sub")  # d/sub is a directory: not replaced by a file
    assert r.returncode == 4 and b"is a directory" in r.stderr
    assert _receive("rel.bin", data, md5, cwd=tmp_path / "d").returncode == 0  # relative: from the login's cwd
    assert (tmp_path / "d" / "rel.bin").read_bytes() == data
    assert not [p for p in tmp_path.rglob(".*.part")]


def test_receive_without_fallocate_and_on_a_full_disk(tmp_path):
    """A guest without fallocate (busybox builds, minimal images) writes the file as it comes;
    one whose disk cannot hold the file says so before anything is sent."""
    import hashlib
    import shutil

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cat", "md5sum", "mv", "chmod", "rm", "wc", "printf"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    data = os.urandom(5000)
    md5 = hashlib.md5(data).hexdigest()
    from ravel.access.copy import RECEIVE

    r = subprocess.run(["/bin/sh", "-c", RECEIVE, "sh", str(tmp_path / "f.bin"), "x", "t1"],
                       input=f"{md5} {len(data)} 644\n".encode() + data, capture_output=True, timeout=30,
                       env={"PATH": str(bin_dir)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "f.bin").read_bytes() == data
    # more than the file system holds: refused at once, nothing left
    head = f"{md5} {1 << 62} 644\n".encode()
    r = subprocess.run(["sh", "-c", RECEIVE, "sh", str(tmp_path / "huge.bin"), "x", "t2"], input=head,
                       capture_output=True, timeout=30)
    assert r.returncode == 4 and (b"No space" in r.stderr or b"too large" in r.stderr), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "f.bin"]


def test_receive_with_busybox_alone(tmp_path):
    """A guest whose shell and tools are busybox's (Alpine, minimal images): the same script."""
    import hashlib
    import shutil

    from ravel.access.copy import RECEIVE

    busybox = shutil.which("busybox")
    assert busybox, "make setup installs busybox-static"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "cat", "md5sum", "mv", "chmod", "rm", "wc", "printf", "fallocate"):
        (bin_dir / tool).symlink_to(busybox)

    def receive(name: str, data: bytes, whole: bytes, mode: str = "640") -> subprocess.CompletedProcess[bytes]:
        head = f"{hashlib.md5(whole).hexdigest()} {len(whole)} {mode}\n".encode()
        return subprocess.run([busybox, "sh", "-c", RECEIVE, "sh", str(tmp_path / name), "x", "t1"],
                              input=head + data, capture_output=True, timeout=30, env={"PATH": str(bin_dir)})

    data = os.urandom(70000)
    r = receive("f.bin", data, data, "750")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "f.bin").read_bytes() == data and (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o750
    zeros = b"z" + bytes(9999)
    r = receive("z.bin", zeros[:10], zeros)
    assert r.returncode == 3 and r.stderr.startswith(b"got 10 bytes"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "f.bin"]


def test_send_gives_the_file_then_its_sum_or_says_what_it_is(tmp_path):
    import hashlib

    from ravel.access.copy import DIRECTORY, SEND

    f = tmp_path / "f.bin"
    f.write_bytes(b"abc" * 1000)
    f.chmod(0o751)
    r = subprocess.run(["sh", "-c", SEND, "sh", str(f)], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == f.read_bytes()
    assert r.stderr.decode().split() == ["ravel-sum", hashlib.md5(f.read_bytes()).hexdigest(), "3000", "751"]
    r = subprocess.run(["sh", "-c", SEND, "sh", str(tmp_path)], capture_output=True, timeout=30)
    assert r.returncode == DIRECTORY and r.stdout == b""
    r = subprocess.run(["sh", "-c", SEND, "sh", str(tmp_path / "none")], capture_output=True, timeout=30)
    assert r.returncode == 21 and b"no such file" in r.stderr


def test_the_hand_over_helper_gives_ssh_the_socket_ravel_made(tmp_path):
    """handover.HAND_OVER, ssh's ProxyCommand when ravel made the connection: it fetches the socket
    from ravel's unix socket and passes it on its stdout (ProxyUseFdpass), as ssh expects."""
    import sys

    from ravel.access.handover import HAND_OVER

    made, far = socket.socketpair()  # stands for the connection ravel made to the guest
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "conn"))
    listener.listen(1)
    ssh_end, helper_out = socket.socketpair()  # ssh's end and the helper's stdout

    def give() -> None:
        peer, _ = listener.accept()
        with peer:
            socket.send_fds(peer, [b"x"], [made.fileno()])

    t = threading.Thread(target=give)
    t.start()
    p = subprocess.run([sys.executable, "-I", "-S", "-c", HAND_OVER, str(tmp_path / "conn")], stdout=helper_out,
                       timeout=30)
    t.join(5)
    assert p.returncode == 0
    _, fds, _, _ = socket.recv_fds(ssh_end, 1, 1)
    assert len(fds) == 1
    with socket.socket(fileno=fds[0]) as got:
        got.sendall(b"ping")
        assert far.recv(4) == b"ping"  # the very connection ravel made
    # ravel had nothing to give (its connection failed): the helper fails, ssh says so
    listener2 = socket.socket(socket.AF_UNIX)
    listener2.bind(str(tmp_path / "conn2"))
    listener2.listen(1)
    t = threading.Thread(target=lambda: listener2.accept()[0].close())
    t.start()
    p = subprocess.run([sys.executable, "-I", "-S", "-c", HAND_OVER, str(tmp_path / "conn2")], stdout=helper_out,
                       timeout=30)
    t.join(5)
    assert p.returncode == 1
    for s in (made, far, listener, listener2, ssh_end, helper_out):
        s.close()


def test_a_file_that_cannot_be_read_here_is_a_copy_error(tmp_path):
    from ravel.access.copy import CopyError, _digest

    with pytest.raises(CopyError, match="cannot read it"):
        _digest(tmp_path)  # a directory: open() fails as it would for a file without read permission
