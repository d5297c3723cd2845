"""One source of truth for the blueprint format: the JSON Schema (`ravel schema`) is made from the
models the loader validates with, the key table of docs/blueprint.md is made from the schema, and
every blueprint the repository ships (blueprints/, YAML blocks in the docs) is valid as shipped
against the provider it names."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ravel.errors import BlueprintError
from ravel.model.keytable import BEGIN, END, key_table
from ravel.model.resolve import load_blueprint
from ravel.model.spec import json_schema
from ravel.plan.catalogue import load_catalogue
from ravel.plan.fit import check_fit

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = jsonschema.Draft202012Validator(json_schema())


def shipped() -> list[tuple[str, str]]:
    """(where, text) of every blueprint in the repository: the files and the docs' YAML blocks."""
    out = [(str(p.relative_to(ROOT)), p.read_text()) for p in sorted((ROOT / "blueprints").glob("*.yaml"))]
    for doc in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]:
        text = doc.read_text()
        for m in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
            if not re.search(r"^(name|vms|networks|defaults):", m.group(1), re.M):
                continue  # not a blueprint (a CI workflow, an inventory)
            out.append((f"{doc.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 2}", m.group(1)))
    return out


def provider_of(text: str) -> str:
    """The provider a blueprint names in a comment (`--provider aws`); the default otherwise."""
    m = re.search(r"^#.*--provider (\w+)", text, re.M)
    return m.group(1) if m else "local"


SHIPPED = shipped()


def test_the_repository_ships_blueprints_and_doc_examples():
    names = {where.split(":")[0] for where, _ in SHIPPED}
    assert {"blueprints/vsphere-lab.yaml", "blueprints/demo.yaml", "docs/blueprint.md"} <= names


@pytest.mark.parametrize("where,text", SHIPPED, ids=[w for w, _ in SHIPPED])
def test_every_shipped_blueprint_is_valid_against_the_provider_it_names(where, text):
    bp = load_blueprint(text, where, str(ROOT / "blueprints"))  # BlueprintError fails the test with its lines
    assert not check_fit(bp, load_catalogue(provider_of(text))), where
    SCHEMA.validate(yaml.safe_load(text))  # and the schema agrees


def test_vsphere_lab_names_a_cloud_provider():
    # its ESXi hosts need 16 GiB each: more than a local host of the default provider offers
    text = (ROOT / "blueprints" / "vsphere-lab.yaml").read_text()
    assert provider_of(text) in ("aws", "gcp")
    assert check_fit(load_blueprint(text, "vsphere-lab.yaml"), load_catalogue("local"))


def test_docs_key_table_is_the_one_made_from_the_schema():
    doc = (ROOT / "docs" / "blueprint.md").read_text()
    assert BEGIN in doc and END in doc
    written = BEGIN + doc.split(BEGIN, 1)[1].split(END, 1)[0] + END
    assert written == key_table(), "run: .venv/bin/python tools/blueprint_keys.py"


def schema_keys(schema: dict, node: dict | None = None, prefix: str = "") -> set[str]:
    node = node or schema
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    out = set()
    for key, prop in node.get("properties", {}).items():
        out.add(prefix + key)
        if key == "defaults" and not prefix:
            continue
        for branch in prop.get("anyOf", [prop]):
            while "$ref" in branch:
                branch = schema["$defs"][branch["$ref"].rsplit("/", 1)[-1]]
            if "properties" in branch:
                out |= schema_keys(schema, branch, f"{prefix}{key}.")
            elif branch.get("type") == "array" and "$ref" in branch.get("items", {}):
                out |= schema_keys(schema, branch["items"], f"{prefix}{key}[].")
            elif isinstance(branch.get("additionalProperties"), dict) and "$ref" in branch["additionalProperties"]:
                out |= schema_keys(schema, branch["additionalProperties"], f"{prefix}{key}.<name>.")
    return out


def test_every_schema_key_has_a_row_in_the_docs():
    doc = (ROOT / "docs" / "blueprint.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+)` \|", doc, re.M))
    assert schema_keys(json_schema()) == rows
    assert "vms.<name>.count" in rows and "defaults.count" not in rows


def test_ravel_schema_prints_the_schema():
    p = subprocess.run([sys.executable, "-m", "ravel", "schema"], capture_output=True, text=True, cwd=ROOT,
                       timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0 and json.loads(p.stdout) == json_schema()


# -- the schema and the validator agree --------------------------------------------------------

BASE = "name: a\nnetworks: {n: {subnet: 10.0.0.0/24, gateway: 10.0.0.1}}\nvms:\n  x: {nics: [{network: n}]}\n"

# shapes the validator refuses; the schema must refuse each too (issue 15, item 8)
REFUSED = [
    "name: a\nvms: {x: {}}\nplacement: {cpu_overcommit: \"2\"}\n",
    "name: a\nvms: {x: {}}\nplacement: {cpu_overcommit: true}\n",
    "name: a\nvms: {x: {}}\nplacement: {cpu_overcommit: 17}\n",
    "name: a\nvms: {x: {memory: 4Gib}}\n",
    "name: a\nvms: {x: {memory: 4XB}}\n",
    "name: a\nvms: {x: {memory: -1}}\n",
    "name: a\nvms: {x: {memory: 0}}\n",
    "name: a\nvms: {x: {}}\ndefaults: {count: 2}\n",
    "name: a\nvms: {}\n",
    "name: a\n",
    f"name: {'a' * 41}\nvms: {{x: {{}}}}\n",
    f"name: a\nvms: {{{'x' * 33}: {{}}}}\n",
    "name: a\nvms: {Web: {}}\n",
    "name: a\nnetworks: {N_1: {subnet: 10.0.0.0/24}}\nvms: {x: {}}\n",
    "name: a\nnetworks: {n: {subnet: 10.0.0.0/33}}\nvms: {x: {}}\n",
    "name: a\nnetworks: {n: {subnet: 10.0.0.0/24, gateway: 10.0.0.256}}\nvms: {x: {}}\n",
    "name: a\nnetworks: {n: {subnet: 10.0.0.0/24}}\nvms: {x: {nics: [{network: n, mac: \"01:00:5e:00:00:01\"}]}}\n",
    "name: a\nnetworks: {n: {subnet: 10.0.0.0/24}}\nvms: {x: {nics: [{network: n, mac: zz}]}}\n",
    "name: a\nnetworks: {n: {subnet: 10.0.0.0/24}}\nvms: {x: {nics: [{network: n, ip: 10.0.0.300}]}}\n",
    "name: a\nvms: {x: {cpus: \"4\"}}\n",
    "name: a\nvms: {x: {nested: maybe}}\n",
    "name: a\nvms: {x: {cpuz: 2}}\n",
    "name: a\nvms: {x: {count: 0}}\n",
    "name: a\nvms: {x: {ready: {tcp: 0}}}\n",
    "name: a\nvms: {x: {services: [{port: 70000}]}}\n",
    "name: a\nvms: {x: {user: Root}}\n",
    "name: a\nvms: {x: {}}\nrouting: {deny: [[a, b, c]]}\n",
    "name: a\nvms: {x: {}}\nplacement: {anti_affinity: [[]]}\n",
    "name: a\nvms: {x: {}}\nfirewall: {allow: [{from: a, to: b, ports: [70000]}]}\n",
    "name: a\nvms: {x: {}}\nfirewall: {allow: [{from: a, to: b, ports: [\"80-x\"]}]}\n",
    "name: a\nvms: {x: {}}\nnetworks: null\n",
    "name: a\nvms: {x: {}}\nplacement: null\n",
]


@pytest.mark.parametrize("text", REFUSED)
def test_schema_refuses_what_the_validator_refuses(text):
    with pytest.raises(BlueprintError):
        load_blueprint(text, "x.yaml")
    assert not SCHEMA.is_valid(yaml.safe_load(text)), text


def test_base_is_valid_for_both():
    load_blueprint(BASE, "x.yaml")
    SCHEMA.validate(yaml.safe_load(BASE))


sizes = st.one_of(st.integers(-2, 5000), st.sampled_from(
    ["1GiB", "4Gib", "512MiB", "1.5G", "0.5M", "2 GB", "3tb", "1Mb", "7kib", "10gB", "GiB", "1.25GiB", " 64M "]))
vm = st.fixed_dictionaries({}, optional={
    "cpus": st.one_of(st.integers(-1, 1100), st.just("2"), st.booleans()),
    "memory": sizes,
    "count": st.integers(0, 4),
    "nested": st.one_of(st.booleans(), st.just("yes")),
    "firmware": st.sampled_from(["bios", "uefi", "efi"]),
    "disks": st.lists(st.fixed_dictionaries({}, optional={"size": sizes, "bus": st.sampled_from(["virtio", "scsi"])}),
                      max_size=2),
    "nics": st.lists(st.fixed_dictionaries({"network": st.sampled_from(["n", "m"])}, optional={
        "ip": st.sampled_from(["10.0.0.5", "10.0.0.300", "10.0.1.5", "x"]),
        "mac": st.sampled_from(["52:54:00:00:00:01", "01:00:00:00:00:01", "5254"]),
        "model": st.sampled_from(["virtio", "vmxnet3", "rtl"])}), max_size=2),
    "ready": st.sampled_from(["ssh", "none", "later", {"tcp": 22}, {"tcp": 0}, {"console": "login:"}]),
    "user": st.sampled_from(["ravel", "Root", "_x"]),
})
docs = st.fixed_dictionaries({
    "name": st.sampled_from(["a", "lab-1", "-bad", "x" * 41]),
    "vms": st.dictionaries(st.sampled_from(["web", "db", "Bad", "x" * 33]), vm, max_size=3),
}, optional={
    "networks": st.just({"n": {"subnet": "10.0.0.0/24", "gateway": "10.0.0.1"}}),
    "placement": st.fixed_dictionaries({}, optional={
        "cpu_overcommit": st.one_of(st.floats(0, 20), st.integers(0, 20), st.just("2"), st.booleans()),
        "optimize": st.sampled_from(["cost", "performance", "speed"]),
        "max_hosts": st.integers(0, 3)}),
    "defaults": st.fixed_dictionaries({}, optional={"memory": sizes, "count": st.integers(1, 2)}),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs)
def test_what_the_validator_accepts_the_schema_accepts(doc):
    text = yaml.safe_dump(doc)
    try:
        load_blueprint(text, "x.yaml")
    except BlueprintError:
        return
    errors = [e.message for e in SCHEMA.iter_errors(yaml.safe_load(text))]
    assert not errors, (text, errors)
