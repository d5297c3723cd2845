"""Fuzzing the loader: any input gives a Blueprint or a BlueprintError, never anything else."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ravel.errors import BlueprintError
from ravel.model.blueprint import Blueprint
from ravel.model.resolve import load_blueprint

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(data):
    try:
        bp = load_blueprint(data, "fuzz.yaml", "/base")
    except BlueprintError as exc:
        assert exc.problems, "a BlueprintError must carry at least one problem"
        for p in exc.problems:
            assert p.file == "fuzz.yaml" and p.message
            assert str(p).startswith("fuzz.yaml")
        return None
    assert isinstance(bp, Blueprint)
    assert len({vm.name for vm in bp.vms}) == len(bp.vms)
    return bp


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes(data):
    check(data)


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("name:vms- {}[]\n\t&*<>!|'\"#%@`,?x0123456789abc./")), max_size=300))
def test_yamlish_text(text):
    check(text)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["1GiB", "512MiB", "x", "10.0.0.0/24", "10.0.0.5", "lan", "vmxnet3", "pvscsi", "52:54:00:00:00:01", "-3", "0"]),
)
keys = st.sampled_from(["name", "vms", "networks", "placement", "cpus", "memory", "count", "nics", "disks",
                        "network", "ip", "mac", "subnet", "gateway", "size", "image", "bus", "model",
                        "anti_affinity", "max_hosts", "defaults", "boot", "kernel", "x-a", "web", "lan", "oops"])
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(keys, inner, max_size=5)), max_leaves=25)


@FUZZ
@given(st.dictionaries(keys, trees, max_size=6))
def test_structured_documents(doc):
    check(yaml.safe_dump(doc))


@FUZZ
@given(
    st.dictionaries(st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True),
                    st.fixed_dictionaries({}, optional={"cpus": st.integers(-1, 64), "count": st.integers(0, 5),
                                                        "memory": st.sampled_from([0, 64, "1GiB", "2G", "3.5GiB", "1.1MiB"])}),
                    min_size=1, max_size=6)
)
def test_valid_shaped_vms_expand_consistently(vms):
    bp = check(yaml.safe_dump({"name": "f", "vms": vms}))
    if bp is not None:
        assert len(bp.vms) == sum(v.get("count", 1) for v in vms.values())
