"""Validation reports every problem in one run, each at its file, line and key (issue 15, item 8),
and bad input through the CLI is exit 2 with located lines, never an internal error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ravel.errors import BlueprintError
from ravel.model.resolve import load_blueprint

ROOT = Path(__file__).resolve().parents[2]


def problems(text: str) -> list[str]:
    with pytest.raises(BlueprintError) as info:
        load_blueprint(textwrap.dedent(text), "bp.yaml")
    return info.value.lines()


def test_a_misspelt_key_does_not_hide_an_undefined_network_on_the_same_vm():
    assert problems("""\
        name: a
        networks: {lan: {subnet: 10.0.0.0/24}}
        vms:
          web:
            cpuz: 2
            nics: [{network: lna}]
        """) == [
        "bp.yaml:5:5: vms.web.cpuz: unknown key 'cpuz' (did you mean 'cpus'?)",
        "bp.yaml:6:22: vms.web.nics[0].network: network 'lna' is not defined (did you mean 'lan'?); "
        "defined networks: lan",
    ]


def test_a_bad_mac_does_not_hide_a_bad_ip_on_the_same_nic():
    assert problems("""\
        name: a
        networks: {lan: {subnet: 10.0.0.0/24}}
        vms:
          web:
            nics: [{network: lan, mac: "52:54:zz:00:00:01", ip: 10.0.0.300}]
        """) == [
        "bp.yaml:5:32: vms.web.nics[0].mac: '52:54:zz:00:00:01' is not a MAC address such as 52:54:00:12:34:56",
        "bp.yaml:5:57: vms.web.nics[0].ip: '10.0.0.300' is not an IPv4 address",
    ]


def test_problems_across_parts_of_one_vm_and_its_defaults_all_at_once():
    lines = problems("""\
        name: a
        networks: {lan: {subnet: 10.0.0.0/24, gateway: 10.0.0.1}}
        defaults: {count: 2, memory: 4Gib, cpus: 2}
        vms:
          web:
            firmware: uefy
            uefi_vars: vars.fd
            disks: [{size: 0}, {image: a.qcow2, bus: scsi}]
            nics: [{network: lan, ip: 10.0.0.1}]
            services: [{port: 70000}]
        placement: {cpu_overcommit: "2"}
        """)
    assert [line.split(": ", 2)[1] for line in lines] == [
        "defaults.count", "defaults.memory", "vms.web.firmware", "vms.web.disks[0].size",
        "vms.web.disks[1].bus", "vms.web.nics[0].ip", "vms.web.services[0].port", "placement.cpu_overcommit"]
    # a wrong key is left out, not replaced by its default: no "uefi_vars needs firmware: uefi"
    assert not any("uefi_vars" in line for line in lines)


def test_a_broken_network_is_not_also_undefined():
    lines = problems("""\
        name: a
        networks: {lan: {subnet: 10.0.0.0/33}}
        vms: {web: {nics: [{network: lan}]}}
        firewall: {allow: [{from: lan, to: lan}]}
        """)
    assert len(lines) == 1 and "networks.lan.subnet" in lines[0], lines


@pytest.mark.parametrize("key,written", [("~", "~"), ("null", "~"), ("1", "1"), ("true", "true")])
def test_non_string_keys_are_reported_at_their_own_line(key, written):
    lines = problems(f"""\
        name: a
        vms:
          web:
            cpus: 1

            {key}: 3
            memory: 1GiB
        """)
    assert lines == [f"bp.yaml:6:5: vms.web.{written}: a key here is a name (text), not a number, a boolean or null"]


@pytest.mark.parametrize("where", ["vms.web.memory", "vms.web.disks[0].size"])
@pytest.mark.parametrize("value", ["[1, 2]", "{a: 1}"])
def test_no_internal_type_names_in_messages(where, value):
    part = {"vms.web.memory": f"memory: {value}", "vms.web.disks[0].size": f"disks: [{{size: {value}}}]"}[where]
    lines = problems(f"name: a\nvms:\n  web: {{{part}}}\n")
    assert len(lines) == 1 and where in lines[0]
    assert "Pos" not in lines[0] and ("a list" in lines[0] or "a mapping" in lines[0]), lines


def test_a_blueprint_without_problems_still_loads():
    bp = load_blueprint("name: a\nnetworks: {lan: {subnet: 10.0.0.0/24}}\nvms: {web: {nics: [{network: lan}]}}\n")
    assert bp.vms[0].nics[0].network == "lan"


# -- through the CLI --------------------------------------------------------------------------------

def ravel(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAVEL_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ravel", *args], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)


@pytest.mark.parametrize("body,expected", [
    ("name: a\nvms:\n  a:\n    cpus: 1" + "0" * 5000 + "\n",
     "big.yaml:4:11: a number of 5,001 characters is out of range (at most 40); quote it if it is text"),
    ("name: a\nx-a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"x-{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "vms: {a: {}}\n",
     "big.yaml:5:6: YAML aliases of anchor &d (line 5) expand this document past 100,000 copied values"),
])
def test_cli_validate_and_plan_of_hostile_files_are_exit_2(tmp_path, body, expected):
    (tmp_path / "big.yaml").write_text(body)
    for command in ("validate", "plan"):
        p = ravel(tmp_path, command, "big.yaml")
        assert p.returncode == 2, p.stderr
        assert p.stderr.startswith(expected), p.stderr
        assert "internal error" not in p.stderr and "Traceback" not in p.stderr
