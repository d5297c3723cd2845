"""The pure parts of the SSH path: quoting, pinned-key parsing, the local hosts' sshd_config."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ravel import keys
from ravel.errors import TransportError
from ravel.providers.local_sshd import SshdFiles, sshd_config
from ravel.transport.ssh import SSHTransport, command_line, public_key

ARG = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"))


@given(st.lists(ARG, min_size=1, max_size=6))
def test_a_command_line_splits_back_into_its_arguments(argv):
    assert shlex.split(command_line(argv)) == argv


def test_a_command_line_never_lets_the_shell_expand_anything():
    line = command_line(["echo", "$HOME", "`id`", "$(id)", "a;b", "x\ny", "*"])
    assert line == "echo '$HOME' '`id`' '$(id)' 'a;b' 'x\ny' '*'"
    with pytest.raises(ValueError):
        command_line([])


def test_public_key_lines_parse_and_garbage_is_refused(tmp_path):
    pair = keys.generate("ravel-x-host-1")
    key = public_key(pair.public_line)
    assert key.get_name() == "ssh-ed25519" and pair.public_line.split()[1] == key.get_base64()
    with pytest.raises(TransportError, match="host-1: the pinned host key is not a public key line"):
        SSHTransport("host-1", "198.18.0.1", host_key="not a key", key_file=tmp_path / "k")


def test_local_sshd_config_allows_ravels_key_only():
    text = sshd_config(SshdFiles(Path("/run/ravel/t/app/sshd-host-1")), "198.18.0.7")
    lines = set(text.splitlines())
    assert {"ListenAddress 198.18.0.7:22", "HostKey /run/ravel/t/app/sshd-host-1/host_ed25519",
            "AuthorizedKeysFile /run/ravel/t/app/sshd-host-1/authorized_keys",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "AuthenticationMethods publickey",
            "PermitRootLogin prohibit-password", "PidFile /run/ravel/t/app/sshd-host-1/sshd.pid"} <= lines
    assert not any(line.startswith("Include") for line in lines)
