"""Files streamed through an SSH transport (what disk moves and layer fetches use): every byte
arrives, across read-ahead windows and request boundaries; a write that fails leaves nothing
under the real name or a temporary one; several transfers of one host run at once. Real sshd in
a real namespace, the same host as the transport contract tests."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest
from tests.contract.test_transport import lab, ssh  # noqa: F401 - the same hosts

from ravel.errors import MissingFile, TransportError
from ravel.transport.base import Streaming
from ravel.transport.copying import pump
from ravel.transport.ssh import READ_WINDOW, SFTP_REQUEST


def test_bytes_stream_whole_across_windows_and_requests(ssh, tmp_path):  # noqa: F811
    assert isinstance(ssh, Streaming)
    data = os.urandom(READ_WINDOW + 3 * SFTP_REQUEST + 17)
    src, dst = tmp_path / "src", tmp_path / "sub" / "dst"
    src.write_bytes(data)
    src.chmod(0o640)
    with ssh.reading(str(src)) as blocks, ssh.writing(str(dst), blocks.mode) as out:
        assert blocks.size == len(data)
        passed = pump(blocks, out)
    assert passed.sha256 == hashlib.sha256(data).hexdigest() and passed.size == len(data)
    assert dst.read_bytes() == data and dst.stat().st_mode & 0o777 == 0o640
    assert os.listdir(dst.parent) == ["dst"]


def test_a_write_that_fails_leaves_nothing(ssh, tmp_path):  # noqa: F811
    dst = tmp_path / "dst"
    dst.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with ssh.writing(str(dst)) as out:
            out.write(b"new, half")
            raise RuntimeError("the source failed part-way")
    assert dst.read_bytes() == b"old" and os.listdir(tmp_path) == ["dst"]


def test_reading_a_missing_file_says_so(ssh, tmp_path):  # noqa: F811
    with pytest.raises(MissingFile, match=r"^host-2: cannot read .*/nope: no such file"):
        with ssh.reading(str(tmp_path / "nope")):
            pass
    # the session that answered is still good
    (tmp_path / "yes").write_bytes(b"x")
    assert ssh.read(str(tmp_path / "yes")) == b"x"


def test_transfers_of_one_host_run_at_once(ssh, tmp_path):  # noqa: F811
    """Reading one file while writing another on the same host (a move within one host) would
    wait on itself forever with a single session."""
    data = os.urandom(2 * SFTP_REQUEST)
    (tmp_path / "a").write_bytes(data)
    done = threading.Event()

    def copy() -> None:
        with ssh.reading(str(tmp_path / "a")) as blocks, ssh.writing(str(tmp_path / "b")) as out:
            pump(blocks, out)
        done.set()

    th = threading.Thread(target=copy, daemon=True)
    th.start()
    th.join(60)
    assert done.is_set() and (tmp_path / "b").read_bytes() == data


def test_a_put_of_a_missing_local_file_is_a_transport_error(ssh, tmp_path):  # noqa: F811
    with pytest.raises(TransportError, match="cannot send"):
        ssh.put(tmp_path / "absent", str(tmp_path / "x"))
