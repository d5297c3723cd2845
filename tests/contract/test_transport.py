"""One contract for every Transport: a namespace host (`ip netns exec`) and an SSH host (a real
sshd inside a real namespace, reached over the local provider's underlay link), both made by
the local provider exactly as `ravel publish` makes them. Then what only SSH has: pinned host
keys, bounded retries while a host boots, one kept connection."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ravel import keys
from ravel.errors import CommandFailed, HostKeyMismatch, MissingFile, TransportError
from ravel.paths import paths
from ravel.providers import local_sshd
from ravel.providers.base import HostSpec
from ravel.providers.local import LocalProvider, namespaces
from ravel.transport.base import CommandStream, Transport
from ravel.transport.netns import NamespaceTransport
from ravel.transport.ssh import SSHTransport

APP = f"ct{os.getpid()}"
KINDS = ["netns", "ssh"]
# what each kind declares: a namespace shares this machine's files; an SSH host promises nothing
# (the local provider's SSH hosts do share them, as an SSH-reached cloud host would not)
IS_LOCAL = {"netns": True, "ssh": False}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Two hosts of one provider, one per transport; torn down with a check for leftovers."""
    if os.geteuid() != 0:
        pytest.fail("transport contract tests need root (network namespaces); run `make test` as root")
    provider = LocalProvider(paths({"RAVEL_HOME": str(tmp_path_factory.mktemp("home"))}))
    made = {}
    try:
        for i, kind in enumerate(KINDS, start=1):
            host = provider.ensure_host(HostSpec(APP, f"host-{i}", i, "local-small", transport=kind))
            made[kind] = (host, provider.transport(host))
        yield provider, made
    finally:
        for i, kind in enumerate(KINDS, start=1):
            if kind in made:
                made[kind][1].close()
            provider.delete_host(APP, f"host-{i}", i)
        provider.cleanup()
        left = [ns for ns in namespaces() if ns.startswith(f"rv-{APP}-") or ns == provider.underlay]
        left += [provider.root_link] if _link_exists(provider.root_link) else []
        left += [str(d) for d in (provider.paths.app_run(APP), provider.paths.run) if d.exists()]
        assert not left, f"left behind: {left}"


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


@pytest.fixture(params=KINDS)
def t(request, lab):
    return lab[1][request.param][1]


@pytest.fixture
def ssh(lab):
    return lab[1]["ssh"][1]


# -- commands ----------------------------------------------------------------------------------

def test_stdout_stderr_and_exit_status(t):
    r = t.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (r.rc, r.stdout, r.stderr, r.ok) == (3, "out\n", "err\n", False)
    assert t.run(["true"]).ok


def test_a_failing_command_raises_command_failed(t):
    with pytest.raises(CommandFailed) as info:
        t.run(["sh", "-c", "echo boom >&2; exit 4"])
    assert info.value.rc == 4 and info.value.host == t.host
    assert "boom" in info.value.message and t.host in info.value.message


def test_a_missing_program_is_a_failed_command(t):
    assert t.run(["ravel-no-such-program"], check=False).rc not in (0, None)
    with pytest.raises(CommandFailed):
        t.run(["ravel-no-such-program"])


AWKWARD = ["a b", "it's", '"double"', "$HOME", "${PATH}", "`id`", "$(id)", "x\ny", "*", "", "--",
           "ü €", "back\\slash", ";", "&&", "|", "'", "\t", "-n", "~", "#not a comment", "!x"]


def test_arguments_arrive_exactly_as_given(t):
    out = t.run(["printf", "%s\\0", *AWKWARD]).stdout
    assert out.split("\0")[:-1] == AWKWARD


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=12),
                min_size=1, max_size=4))
def test_any_arguments_survive(t, args):
    assert t.run(["printf", "%s\\0", *args]).stdout.split("\0")[:-1] == args


def test_stdin_is_given_or_empty(t):
    assert t.run(["cat"], input=b"hello\nworld\n").stdout == "hello\nworld\n"
    assert t.run(["cat"], timeout=10).stdout == ""  # no input: end of file at once, never a hang


def test_large_input_and_output_do_not_deadlock(t):
    data = (b"0123456789abcdef" * 65536) * 4  # 4 MiB through `cat`: more than any window or pipe
    r = t.run(["cat"], input=data, timeout=60)
    assert len(r.stdout) == len(data) and r.stdout[-16:] == "0123456789abcdef"


def test_a_slow_command_times_out(t):
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        t.run(["sleep", "30"], timeout=1)
    assert time.monotonic() - started < 6
    assert t.host in info.value.message and "did not finish within 1 s" in info.value.message
    assert t.run(["echo", "still usable"]).stdout == "still usable\n"


# -- files ---------------------------------------------------------------------------------------

def test_put_and_get_round_trip_with_modes(t, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    remote = str(tmp_path / f"on-host-{t.host}" / "deep" / "file.bin")
    t.put(src, remote, 0o600)
    assert t.run(["stat", "-c", "%a %s", remote]).stdout.split() == ["600", "300000"]
    back = tmp_path / "back.bin"
    t.get(remote, back)
    assert back.read_bytes() == src.read_bytes()
    assert back.stat().st_mode & 0o777 == 0o600
    # a second put replaces the file whole, with its new mode, and leaves no temporary file
    src.write_bytes(b"#!/bin/sh\necho replaced\n")
    t.put(src, remote, 0o755)
    assert t.run([remote]).stdout == "replaced\n"
    assert sorted(os.listdir(os.path.dirname(remote))) == ["file.bin"]


def test_file_errors_are_transport_errors(t, tmp_path):
    with pytest.raises(TransportError, match=f"{t.host}: cannot read .*nope"):
        t.get(str(tmp_path / "nope"), tmp_path / "x")
    src = tmp_path / "src"
    src.write_text("x")
    with pytest.raises(TransportError, match=f"{t.host}: cannot write /proc/ravel-nope/x"):
        t.put(src, "/proc/ravel-nope/x")


# what a guest's console may hold that is not UTF-8: a lone continuation byte, a truncated
# sequence, an overlong encoding, bytes UTF-8 never uses, NUL, CR, then every byte value
NOT_UTF8 = b"ok \x80 \xc3( \xe2\x82 \xc0\xaf \xff\xfe\x00\r\n" + bytes(range(256))


def _on_host(t, tmp_path, payload: bytes) -> str:
    src = tmp_path / "payload.bin"
    src.write_bytes(payload)
    remote = str(tmp_path / f"read-{t.host}" / "console.log")
    t.put(src, remote)
    return remote


def test_read_returns_the_exact_bytes(t, tmp_path):
    payload = NOT_UTF8 * 40
    remote = _on_host(t, tmp_path, payload)
    assert t.read(remote) == payload
    assert t.read(remote, 3, 7) == payload[3:10]
    assert t.read(remote, len(payload) - 2, 100) == payload[-2:]
    assert t.read(remote, len(payload)) == b"" and t.read(remote, len(payload) + 9) == b""
    # read in pieces, as `ravel logs -f` follows a log: every byte once, in order
    pieces, offset = [], 0
    while chunk := t.read(remote, offset, 1000):
        pieces.append(chunk)
        offset += len(chunk)
    assert b"".join(pieces) == payload and len(pieces) == -(-len(payload) // 1000)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000), st.integers(0, 3100), st.integers(1, 4000))
def test_any_bytes_read_back_from_any_offset(t, tmp_path, payload, offset, limit):
    remote = _on_host(t, tmp_path, payload)
    assert t.read(remote, offset, limit) == payload[offset:offset + limit]


def test_reading_a_missing_file_says_so(t, tmp_path):
    with pytest.raises(MissingFile, match=f"^{t.host}: cannot read .*nope: no such file"):
        t.read(str(tmp_path / "nope"))
    assert issubclass(MissingFile, TransportError)


def test_an_unreachable_host_is_a_transport_error(lab, t):
    if isinstance(t, NamespaceTransport):
        gone = NamespaceTransport("ghost", f"rv-{APP}-nowhere")
    else:  # the host is there, but nothing listens on this port: refused, retried, then given up
        gone = SSHTransport("ghost", t.address, host_key=_pin(t), key_file=t.key_file, port=2222, device=t.device)
    started = time.monotonic()
    with pytest.raises(TransportError, match="^ghost: ") as info:
        gone.run(["true"], timeout=2)
    assert time.monotonic() - started < 5
    if isinstance(t, SSHTransport):
        assert "connection refused" in info.value.message and "attempts" in info.value.message


# -- declared capabilities -------------------------------------------------------------------------

def test_capabilities_are_declared(lab, t):
    kind = next(k for k, (_, made) in lab[1].items() if made is t)
    assert isinstance(t, Transport)
    assert type(t.is_local) is bool and t.is_local is IS_LOCAL[kind]


def test_is_local_is_true_only_where_the_host_sees_this_machines_files(t, tmp_path):
    here = tmp_path / f"written-here-{uuid.uuid4().hex}"
    here.write_text("from this machine\n")
    seen = t.run(["cat", str(here)], check=False)
    if t.is_local:  # the same path names the same file: files may be handed over by name
        assert seen.stdout == "from this machine\n"
        there = tmp_path / f"written-there-{uuid.uuid4().hex}"
        t.run(["sh", "-c", 'echo "from the host" > "$1"', "sh", str(there)])
        assert there.read_text() == "from the host\n"
    # not local: nothing is promised either way (these SSH hosts happen to share the files)


# -- streams ---------------------------------------------------------------------------------------

def _read_all(s: CommandStream, deadline_s: float = 30) -> bytes:
    out, deadline = bytearray(), time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([s], [], [], max(deadline - time.monotonic(), 0))
        if ready:
            chunk = s.recv(65536)
            if not chunk:
                return bytes(out)
            out += chunk
    raise AssertionError(f"stdout did not end within {deadline_s} s ({len(out)} bytes so far)")


def test_a_stream_echoes_bytes_and_reports_the_exit_status(t):
    s = t.stream(["cat"], timeout=30)
    try:
        assert isinstance(s, CommandStream)
        s.sendall(NOT_UTF8)
        s.shutdown_write()
        assert _read_all(s) == NOT_UTF8  # bytes exactly as sent, never decoded
        assert s.wait(10) == 0
    finally:
        s.close()
    s.close()  # idempotent


def test_a_stream_is_interactive(t):
    # the console relay: select() on it, answers arrive while stdin stays open
    s = t.stream(["cat"], timeout=30)
    try:
        for word in (b"first\n", b"second\n"):
            s.sendall(word)
            got = b""
            while len(got) < len(word):
                ready, _, _ = select.select([s], [], [], 10)
                assert ready, f"no echo of {word!r} within 10 s"
                got += s.recv(4096)
            assert got == word
        assert s.wait(0.3) is None  # still running: it waits for more input
    finally:
        s.close()


def test_a_stream_gives_lines_stderr_and_a_failing_status(t):
    script = 'printf "one\\n%s\\nlast" "$(head -c 200000 /dev/zero | tr "\\0" x)"; ' \
             'head -c 262144 /dev/zero | tr "\\0" e >&2; echo "went wrong" >&2; exit 3'
    s = t.stream(["sh", "-c", script], timeout=30)
    try:
        lines = list(s.lines())
        assert lines == [b"one\n", b"x" * 200000 + b"\n", b"last"]  # a long line arrives whole
        err = s.stderr(10)
        assert len(err) == 262144 + 11 and err.endswith(b"went wrong\n")  # more than a pipe holds
        assert s.wait(10) == 3
    finally:
        s.close()


def test_stream_arguments_arrive_exactly_as_given(t):
    s = t.stream(["printf", "%s\\0", *AWKWARD], timeout=30)
    try:
        assert _read_all(s).decode().split("\0")[:-1] == AWKWARD
        assert s.wait(10) == 0
    finally:
        s.close()


def test_a_stream_to_a_missing_program_fails_like_a_command(t):
    s = t.stream(["ravel-no-such-program"], timeout=30)
    try:
        assert _read_all(s) == b""
        assert s.wait(10) not in (0, None)
        assert s.stderr(10)  # says why
    finally:
        s.close()


def test_a_stream_that_cannot_start_is_a_transport_error(t):
    if isinstance(t, NamespaceTransport):
        gone = NamespaceTransport("ghost", f"rv-{APP}-nowhere")
    else:
        gone = SSHTransport("ghost", t.address, host_key=_pin(t), key_file=t.key_file, port=2222, device=t.device)
    started = time.monotonic()
    with pytest.raises(TransportError, match="^ghost: "):
        gone.stream(["true"], timeout=2)
    assert time.monotonic() - started < 5


def test_closing_a_stream_hangs_up(t):
    s = t.stream(["sh", "-c", "echo $$; exec cat"], timeout=30)  # cat keeps the shell's PID
    got = b""
    while not got.endswith(b"\n"):
        chunk = s.recv(100)
        assert chunk, "the command ended early"
        got += chunk
    pid = int(got)
    s.close()  # cat loses its stdin and ends
    # these hosts are namespaces of this machine: its processes are visible here
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), "the command outlived its stream"


# -- connections from the host -------------------------------------------------------------------

ECHO_SERVER = (
    "import socket,sys\n"
    "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(1)\n"
    "print(s.getsockname()[1], flush=True)\n"
    "c,_=s.accept(); data=b''\n"
    "while True:\n"
    "    b=c.recv(65536)\n"
    "    if not b: break\n"
    "    data+=b\n"
    "c.sendall(data[::-1]); c.close()\n")


def test_a_connection_made_from_the_host_carries_bytes_both_ways(t):
    # a listener on the host's own loopback: reachable only from inside the host
    server = t.stream(["python3", "-c", ECHO_SERVER], timeout=30)
    try:
        port = int(next(server.lines()))
        conn = t.connect("127.0.0.1", port, timeout=10)
        try:
            payload = NOT_UTF8 * 20000
            conn.sendall(payload)
            conn.shutdown(1)  # the end of what we send: the server answers then
            got = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += chunk
            assert got == payload[::-1]
        finally:
            conn.close()
        assert server.wait(10) == 0
    finally:
        server.close()


def test_a_connection_nothing_answers_is_a_transport_error_naming_the_host(t):
    started = time.monotonic()
    with pytest.raises(TransportError, match=f"^{t.host}: .*127.0.0.1:1"):
        t.connect("127.0.0.1", 1, timeout=5)  # nothing listens on port 1
    assert time.monotonic() - started < 8


def test_a_connection_is_made_inside_the_host_not_here(lab):
    # a listener on this machine's loopback is not what a namespace host's 127.0.0.1 reaches
    import socket as socketlib
    here = socketlib.socket()
    here.bind(("127.0.0.1", 0))
    here.listen(1)
    try:
        netns = lab[1]["netns"][1]
        with pytest.raises(TransportError, match=f"^{netns.host}: .*(refused|did not answer)"):
            netns.connect("127.0.0.1", here.getsockname()[1], timeout=3)
    finally:
        here.close()


# -- SSH only --------------------------------------------------------------------------------------

def _pin(t: SSHTransport) -> str:
    return f"{t._pinned.get_name()} {t._pinned.get_base64()}"


def test_ssh_host_key_mismatch_is_refused_at_once_and_nothing_runs(ssh, tmp_path):
    marker = tmp_path / "should-not-exist"
    wrong = SSHTransport(ssh.host, ssh.address, host_key=keys.generate().public_line, key_file=ssh.key_file,
                         device=ssh.device)
    started = time.monotonic()
    with pytest.raises(HostKeyMismatch) as info:
        wrong.run(["touch", str(marker)], timeout=30)
    assert time.monotonic() - started < 3  # not retried, although 30 s were allowed
    msg = info.value.message
    assert msg.startswith(f"{ssh.host}: HOST KEY MISMATCH at root@{ssh.address}:22") and "not retried" in msg
    assert "SHA256:" in msg and not marker.exists()


def test_ssh_login_only_with_ravels_key(ssh, tmp_path):
    stranger = tmp_path / "stranger"
    keys.write_private(stranger, keys.generate())
    t = SSHTransport(ssh.host, ssh.address, host_key=_pin(ssh), key_file=stranger, device=ssh.device)
    with pytest.raises(TransportError, match="login key was not accepted"):
        t.run(["true"], timeout=2)


def test_ssh_keeps_one_connection_and_reconnects_when_it_drops(ssh):
    first = ssh.run(["sh", "-c", "echo $SSH_CLIENT"]).stdout.split()[1]
    assert ssh.run(["sh", "-c", "echo $SSH_CLIENT"]).stdout.split()[1] == first  # same source port
    # end the sshd process serving our connection (one we caused): the next command reconnects
    session = int(ssh.run(["sh", "-c", "echo $PPID"]).stdout)
    os.kill(session, signal.SIGTERM)
    time.sleep(0.3)
    assert ssh.run(["echo", "again"]).stdout == "again\n"
    assert ssh.run(["sh", "-c", "echo $SSH_CLIENT"]).stdout.split()[1] != first


def test_ssh_waits_for_a_booting_host(lab, ssh):
    provider, made = lab
    host = made["ssh"][0]
    files = local_sshd.files_for(provider.paths.app_run(APP), host.name)
    ssh.close()
    local_sshd.stop(files)  # the "host" has no sshd yet...
    late = threading.Timer(1.5, local_sshd.start, (files, host.ref, host.name))
    late.start()  # ...until 1.5 s from now
    try:
        started = time.monotonic()
        assert ssh.run(["echo", "booted"], timeout=20).stdout == "booted\n"
        assert 1.4 < time.monotonic() - started < 10
    finally:
        late.join()


def test_ssh_gives_up_naming_the_host_and_the_reason(lab, ssh):
    provider, made = lab
    host = made["ssh"][0]
    files = local_sshd.files_for(provider.paths.app_run(APP), host.name)
    ssh.close()
    local_sshd.stop(files)
    try:
        started = time.monotonic()
        with pytest.raises(TransportError) as info:
            ssh.run(["true"], timeout=2.5)
        assert 2 < time.monotonic() - started < 6
        assert info.value.message.startswith(f"{ssh.host}: no SSH connection to root@{ssh.address}:22: "
                                             "connection refused (")
        assert "ravel destroy" in (info.value.hint or "")
    finally:
        local_sshd.start(files, host.ref, host.name)


def test_ssh_reaches_its_own_underlay_when_another_setup_uses_the_same_address(lab, ssh, tmp_path):
    # a second ravel set-up with an SSH host at the very same underlay address: each
    # transport is bound to its own set-up's link, so each reaches its own host
    other = LocalProvider(paths({"RAVEL_HOME": str(tmp_path / "other")}))
    twin, app = None, f"{APP}x"
    try:
        h = other.ensure_host(HostSpec(app, "host-2", 2, "local-small", transport="ssh"))
        twin = other.transport(h)
        assert twin.address == ssh.address and twin.device != ssh.device
        assert twin.run(["ip", "netns", "identify"]).stdout.strip() == h.ref
        assert ssh.run(["ip", "netns", "identify"]).stdout.strip() == lab[1]["ssh"][0].ref != h.ref
    finally:
        if twin is not None:
            twin.close()
        other.delete_host(app, "host-2", 2)
        other.cleanup()
    assert not _link_exists(other.root_link) and other.underlay not in namespaces()


def test_ssh_reaches_a_new_host_at_a_removed_hosts_address(lab):
    # host ids are reused, so a host made after another was removed takes its underlay address
    # with a new MAC; the link here still mapped the address to the old MAC, and connecting
    # hung until ARP gave the old entry up (45 s, seen with `destroy` then `publish --from`)
    provider, _ = lab
    spec = HostSpec(APP, "host-3", 3, "local-small", transport="ssh")
    t = None
    try:
        for _ in range(2):
            t = provider.transport(provider.ensure_host(spec))
            assert t.run(["echo", "up"], timeout=8).stdout == "up\n"
            t.close()
            t = None
            provider.delete_host(APP, "host-3", 3)
    finally:
        if t is not None:
            t.close()
        provider.delete_host(APP, "host-3", 3)
