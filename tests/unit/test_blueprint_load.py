"""Loader and validation: every problem located as FILE:LINE:COL: path: message."""

from __future__ import annotations

import textwrap

import pytest

from ravel.errors import BlueprintError
from ravel.model.resolve import load_blueprint

GOOD = """\
name: lab
networks:
  lan:
    subnet: 10.0.0.0/24
    gateway: 10.0.0.1
vms:
  web:
    count: 3
    cpus: 2
    memory: 1GiB
    nics:
      - {network: lan, ip: 10.0.0.10, mac: "52:54:00:00:00:10", model: vmxnet3}
  db:
    memory: 2048
    disks:
      - {image: base.qcow2, bus: pvscsi}
      - {size: 10GiB}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(BlueprintError) as info:
        load_blueprint(textwrap.dedent(text), "bp.yaml", "/labs")
    return info.value.lines()


def one(text: str) -> str:
    lines = problems(text)
    assert len(lines) == 1, lines
    return lines[0]


def test_good_blueprint_expands_count_and_resolves_paths():
    bp = load_blueprint(GOOD, "bp.yaml", "/labs")
    assert [vm.name for vm in bp.vms] == ["web-1", "web-2", "web-3", "db"]
    web3 = bp.vm("web-3")
    assert str(web3.nics[0].ip) == "10.0.0.12"
    assert web3.nics[0].mac == "52:54:00:00:00:12"
    assert web3.group == "web" and web3.cpus == 2 and web3.memory_mib == 1024
    db = bp.vm("db")
    assert db.memory_mib == 2048
    assert db.disks[0].image == "/labs/base.qcow2" and db.disks[0].format == "qcow2"
    assert db.disks[1].size_mib == 10240
    assert bp.where("vms.db.disks[0].image") == (16, 17)


def test_count_one_keeps_the_name():
    bp = load_blueprint("name: a\nvms:\n  solo: {count: 1}\n", "x")
    assert [v.name for v in bp.vms] == ["solo"]


def test_defaults_and_anchors_apply():
    bp = load_blueprint(textwrap.dedent("""\
        name: a
        x-big: &big {cpus: 8}
        defaults: {memory: 1GiB, cpus: 2}
        vms:
          a: {}
          b: {<<: *big}
          c: {cpus: 4, memory: 512MiB}
        """), "x")
    assert [(v.cpus, v.memory_mib) for v in bp.vms] == [(2, 1024), (8, 1024), (4, 512)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name: a\nvms:\n  x: {cpus: 2\n", "bp.yaml:4:1: YAML syntax error"),
        ("- a\n- b\n", "bp.yaml:1:1: a blueprint must be a mapping"),
        ("just a string\n", "a blueprint must be a mapping"),
        ("", "bp.yaml: the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("name: a\nvms:\n  x: {cpu: 2}\n", "bp.yaml:3:7: vms.x.cpu: unknown key 'cpu' (did you mean 'cpus'?)"),
        ("name: a\nvm:\n  x: {}\nvms: {y: {}}\n", "bp.yaml:2:1: vm: unknown key 'vm' (did you mean 'vms'?)"),
        ("name: a\nvms:\n  x: {cpus: two}\n", "bp.yaml:3:13: vms.x.cpus: expected a whole number, got a string ('two')"),
        ("name: a\nvms:\n  x: {cpus: 2.5}\n", "vms.x.cpus: expected a whole number"),
        ("name: a\nvms:\n  x: {nested: maybe}\n", "vms.x.nested: expected true or false"),
        ("name: a\nvms:\n  x: {memory: 4XB}\n", "vms.x.memory: unknown unit 'XB'"),
        ("name: a\nvms:\n  x: {memory: lots}\n", "vms.x.memory: 'lots' is not a size"),
        ("name: a\nvms:\n  x: {cpus: 0}\n", "vms.x.cpus: must be positive, got 0"),
        ("name: a\nvms:\n  x: {memory: -1GiB}\n", "vms.x.memory: size must be positive"),
        ("name: a\nvms:\n  x: {memory: 0}\n", "vms.x.memory: size must be positive"),
        ("name: a\nvms:\n  x: {disks: [{size: 0}]}\n", "vms.x.disks[0].size: size must be positive"),
        ("name: a\nvms:\n  x: {count: 0}\n", "vms.x.count: must be positive"),
        ("name: Bad_Name\nvms:\n  x: {}\n", "bp.yaml:1:7: name: 'Bad_Name' is not a valid name"),
        ("name: a\nvms:\n  x: {firmware: efi}\n", "vms.x.firmware: must be one of bios, uefi; got a string ('efi') (did you mean 'uefi'?)"),
        ("name: a\nvms:\n  x: {disks: [{bus: scsi, size: 1}]}\n", "vms.x.disks[0].bus: must be one of virtio, pvscsi, lsilogic, lsisas, sata, ide"),
        ("name: a\nvms:\n  x: {disks: [{}]}\n", "vms.x.disks[0]: a disk needs exactly one of `image`"),
        ("name: a\nvms:\n  x: {boot: {order: [cdrom, disk]}}\n", "vms.x.boot.order: boots from `cdrom` but the VM has no `cdroms`"),
        ("name: a\nvms:\n  x: {boot: {kernel: k, order: [disk]}}\n", "vms.x.boot.order: a VM boots either a `kernel` directly"),
        ("name: a\nvms:\n  x: {boot: {cmdline: quiet}}\n", "vms.x.boot.cmdline: `cmdline` needs `kernel`"),
        ("name: a\nvms:\n  x: {boot: {order: [floppy]}}\n", "vms.x.boot.order[0]: must be one of cdrom, disk, network"),
        ("name: a\nvms:\n  x: {ready: ssh}\n", "vms.x.ready: `ssh` is checked at the VM's first address, and its first NIC has none"),
        ("name: a\nvms:\n  x: {ready: {console: '('}}\n", "vms.x.ready.console: not a regular expression"),
        ("name: a\nnetworks:\n  n: {subnet: 10.0.0.0/24}\nvms:\n  x: {nics: [{network: n}], ready: lease}\n", "`lease` needs the VM's first NIC on a `dhcp: true` network"),
        ("name: a\nvms:\n  x: {user: Root}\n", "vms.x.user:"),
        ("name: a\nvms:\n  x: {uefi_vars: v.fd}\n", "vms.x.uefi_vars: a UEFI variable store needs `firmware: uefi`"),
        ("name: a\nvms:\n  x: {cloud_init: {userdata: x}}\n", "vms.x.cloud_init.userdata:"),
        ("name: a\nnetworks:\n  n: {subnet: 10.0.0.0/33}\nvms:\n  x: {}\n", "bp.yaml:3:15: networks.n.subnet: '10.0.0.0/33' is not an IPv4 CIDR"),
        ("name: a\nnetworks:\n  n: {subnet: 10.0.0.5/24}\nvms:\n  x: {}\n", "has host bits set (did you mean 10.0.0.0/24?)"),
        ("name: a\nnetworks:\n  n: {subnet: banana}\nvms:\n  x: {}\n", "'banana' is not an IPv4 CIDR"),
        ("name: a\nnetworks:\n  n: {subnet: 10.0.0.0/24, gateway: 10.0.1.1}\nvms:\n  x: {}\n", "networks.n.gateway: 10.0.1.1 is outside"),
        ("name: a\nnetworks:\n  n: {subnet: 10.0.0.0/24}\nvms:\n  x: {nics: [{network: m}]}\n", "vms.x.nics[0].network: network 'm' is not defined"),
        ("name: a\nnetworks:\n  lan: {subnet: 10.0.0.0/24}\nvms:\n  x: {nics: [{network: lna}]}\n", "(did you mean 'lan'?)"),
        ("name: a\nnetworks:\n  n: {subnet: 10.0.0.0/24}\nvms:\n  x: {nics: [{network: n, ip: 10.0.1.5}]}\n", "vms.x.nics[0].ip: 10.0.1.5 is outside the usable addresses"),
        ("name: a\nnetworks:\n  n: {subnet: 10.0.0.0/24}\nvms:\n  x: {nics: [{network: n, ip: 10.0.0.255}]}\n", "outside the usable addresses"),
        ("name: a\nnetworks:\n  n: {subnet: 10.0.0.0/24}\nvms:\n  x: {nics: [{network: n, ip: 10.0.0.999}]}\n", "'10.0.0.999' is not an IPv4 address"),
        ("name: a\nnetworks:\n  n: {subnet: 10.0.0.0/24}\nvms:\n  x: {count: 3, nics: [{network: n, ip: 10.0.0.253}]}\n", "10.0.0.255 (address 3 of `count`"),
        ("name: a\nnetworks:\n  n: {subnet: 10.0.0.0/24, gateway: 10.0.0.1}\nvms:\n  x: {nics: [{network: n, ip: 10.0.0.1}]}\n", "is the gateway"),
        ("name: a\nnetworks: {n: {subnet: 10.0.0.0/24}}\nvms:\n  x: {nics: [{network: n, mac: zz}]}\n", "vms.x.nics[0].mac: 'zz' is not a MAC address"),
        ("name: a\nvms:\n  x: {}\n  x: {}\n", "bp.yaml:4:3: vms.x: duplicate key 'x' (first defined on line 3)"),
        ("name: a\nvms: {}\n", "vms: a blueprint needs at least one VM"),
        ("name: a\n", "required key 'vms' is missing"),
        ("vms:\n  x: {}\n", "name: required key 'name' is missing"),
        ("name: a\nvms:\n  x: {}\nplacement: {optimize: cheap}\n", "placement.optimize: must be one of cost, performance"),
        ("name: a\nvms:\n  x: {}\nplacement: {max_hosts: 0}\n", "placement.max_hosts: must be positive"),
        ("name: a\nvms:\n  x: {}\nplacement: {anti_affinity: [[x, y]]}\n", "placement.anti_affinity[0][1]: 'y' is neither a VM nor a VM group"),
        ("name: a\nvms:\n  x: {}\nplacement: {anti_affinity: [[x]]}\n", "needs at least two VMs"),
        ("name: a\nvms:\n  x: {services: [{port: 70000}]}\n", "vms.x.services[0].port: must be at most 65535"),
        ("name: a\nnetworks: {n: {subnet: 10.0.0.0/24, dhcp: true}}\nvms:\n  x: {nics: [{network: n}], services: [{port: 22, protocol: sctp}]}\n", "must be one of tcp, udp"),
        ("name: a\nvms:\n  x: {cpus: 2}\ndefaults: {count: 2}\n", "`count` cannot be a default"),
    ],
)
def test_single_problem_is_located(text, expected):
    line = one(text)
    assert expected in line, line


def test_binary_file():
    with pytest.raises(BlueprintError) as info:
        load_blueprint(b"\x7fELF\x00\x01\x02", "bin.yaml")
    assert info.value.lines() == ["bin.yaml: this is a binary file, not a YAML blueprint"]


def test_non_utf8():
    with pytest.raises(BlueprintError) as info:
        load_blueprint(b"name: \xff\xfe\n", "x.yaml")
    assert "not UTF-8" in info.value.lines()[0]


def test_every_problem_at_once_sorted_by_line():
    lines = problems("""\
        name: a
        networks:
          n: {subnet: 10.0.0.0/24}
        vms:
          x: {cpus: 0, nics: [{network: n, ip: 10.0.0.5}]}
          y: {memory: 1XB, nics: [{network: n, ip: 10.0.0.5}]}
          z: {nics: [{network: n, ip: 10.0.0.6, mac: "52:54:00:00:00:01"}]}
          w: {nics: [{network: n, ip: 10.0.0.6, mac: "52:54:00:00:00:01"}]}
        """)
    # x and y are checked on despite their wrong cpus and memory: y's IP is x's
    assert len(lines) == 5, lines
    assert [int(l.split(":")[1]) for l in lines] == [5, 6, 6, 8, 8]
    assert any("vms.y.nics[0].ip: 10.0.0.5 is already used by x.nics[0]" in l for l in lines)
    assert any("vms.w.nics[0].ip: 10.0.0.6 is already used by z.nics[0] on network 'n'" in l for l in lines)
    assert any("MAC 52:54:00:00:00:01 is already used by z.nics[0]" in l for l in lines)


def test_names_colliding_after_count_expansion():
    lines = problems("""\
        name: a
        vms:
          web-2: {}
          web: {count: 3}
        """)
    assert lines == ["bp.yaml:4:3: vms.web: VM name 'web-2' (from 'web' with count 3) collides with VM 'web-2' defined on line 3"]


def test_anti_affinity_vm_listed_twice_through_its_group():
    line = one("""\
        name: a
        vms:
          web: {count: 2}
        placement:
          anti_affinity: [[web, web-1]]
        """)
    assert "VM 'web-1' appears twice in this set" in line


def test_anti_affinity_sets_unsatisfiable_on_max_hosts():
    # a-b, b-c, a-c through three sets: a triangle needs 3 hosts; b is in two sets
    line = one("""\
        name: a
        vms: {a: {}, b: {}, c: {}}
        placement:
          max_hosts: 2
          anti_affinity: [[a, b], [b, c], [a, c]]
        """)
    assert "placement.anti_affinity:" in line and "cannot be satisfied on at most 2 hosts" in line
    assert "is in 2 sets" in line


def test_anti_affinity_set_larger_than_max_hosts():
    line = one("""\
        name: a
        vms: {web: {count: 4}}
        placement: {max_hosts: 3, anti_affinity: [[web]]}
        """)
    assert "placement.anti_affinity[0]: this set needs 4 distinct hosts but placement.max_hosts is 3" in line


def test_anti_affinity_satisfiable_is_accepted():
    bp = load_blueprint("name: a\nvms: {a: {}, b: {}, c: {}}\nplacement: {max_hosts: 2, anti_affinity: [[a, b], [b, c]]}\n", "x")
    assert bp.placement.anti_affinity == (("a", "b"), ("b", "c"))


def test_performance_mode_rejects_overcommit():
    line = one("name: a\nvms: {a: {}}\nplacement: {optimize: performance, cpu_overcommit: 3}\n")
    assert "performance mode never overcommits" in line


def test_x_keys_ignored_and_merge_keys_override():
    bp = load_blueprint("name: a\nx-d: &d {cpus: 2, memory: 1GiB}\nvms:\n  a: {<<: *d, cpus: 3}\n", "x")
    assert (bp.vms[0].cpus, bp.vms[0].memory_mib) == (3, 1024)


def test_no_cascade_from_an_invalid_vm_into_anti_affinity():
    line = one("name: a\nvms:\n  a: {}\n  b: {cpus: 0}\nplacement: {anti_affinity: [[a, b]]}\n")
    assert "vms.b.cpus: must be positive" in line
