"""The host-type catalogues: well-formed data, honest provenance, and the loader's errors."""

from __future__ import annotations

import datetime
import json
import math
from importlib import resources

import pytest

from ravel.errors import PlacementError
from ravel.plan.catalogue import Catalogue, HostType, catalogue_from_dict, load_catalogue, providers

PROVIDERS = ["aws", "gcp", "local"]


def test_providers_are_the_packaged_files() -> None:
    assert providers() == PROVIDERS


@pytest.mark.parametrize("provider", PROVIDERS)
def test_catalogue_is_well_formed(provider: str) -> None:
    catalogue = load_catalogue(provider)
    assert isinstance(catalogue, Catalogue)
    assert catalogue.provider == provider
    assert catalogue.region and catalogue.source and catalogue.note
    datetime.date.fromisoformat(catalogue.as_of)
    names = [t.name for t in catalogue.host_types]
    assert len(names) == len(set(names))
    for host_type in catalogue.host_types:
        assert isinstance(host_type, HostType)
        assert isinstance(host_type.cpus, int) and host_type.cpus > 0
        assert isinstance(host_type.memory_mib, int) and host_type.memory_mib > 0
        assert host_type.hourly_cost > 0 and math.isfinite(host_type.hourly_cost)
        assert isinstance(host_type.nested_virt, bool)
        assert host_type.family
        assert host_type.accel == ("kvm" if host_type.nested_virt else "tcg")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_raw_json_has_exactly_the_documented_keys(provider: str) -> None:
    text = resources.files("ravel.plan").joinpath(f"catalogues/{provider}.json").read_text()
    data = json.loads(text)
    required = {"provider", "region", "currency", "source", "as_of", "note", "host_types"}
    assert required <= set(data) <= required | {"nested_virt_source"}
    for entry in data["host_types"]:
        assert set(entry) == {"name", "cpus", "memory_mib", "hourly_cost", "nested_virt", "family"}


@pytest.mark.parametrize("provider", ["aws", "gcp"])
def test_cloud_prices_say_where_they_come_from(provider: str) -> None:
    catalogue = load_catalogue(provider)
    assert catalogue.currency == "USD"
    assert catalogue.source.startswith("https://")
    assert "not fetched live" in catalogue.note.lower()
    assert "refresh" in catalogue.note.lower()


def test_local_is_nominal_tcg_and_proportional() -> None:
    catalogue = load_catalogue("local")
    assert catalogue.currency == "nominal"
    assert "nominal" in catalogue.note
    sizes = {t.name: (t.cpus, t.memory_mib) for t in catalogue.host_types}
    assert sizes == {"local-small": (2, 2048), "local-medium": (4, 4096), "local-large": (8, 8192)}
    assert not any(t.nested_virt for t in catalogue.host_types)
    per_cpu = {round(t.hourly_cost / t.cpus, 9) for t in catalogue.host_types}
    assert len(per_cpu) == 1


def test_aws_families_shapes_and_prices() -> None:
    catalogue = load_catalogue("aws")
    assert catalogue.region == "us-east-1"
    assert catalogue.get("c7i.large").hourly_cost == pytest.approx(0.08925)
    assert catalogue.get("m7i.large").hourly_cost == pytest.approx(0.1008)
    assert catalogue.get("r7i.large").hourly_cost == pytest.approx(0.1323)
    gib_per_cpu = {"c": 2, "m": 4, "r": 8}
    per_cpu: dict[str, set[float]] = {}
    for t in catalogue.host_types:
        assert t.memory_mib == t.cpus * gib_per_cpu[t.family[0]] * 1024, t.name
        per_cpu.setdefault(t.family, set()).add(round(t.hourly_cost / t.cpus, 7))
        metal = ".metal" in t.name
        assert t.nested_virt == (metal or t.family.endswith("8i")), t.name
    # linear in size within a family, metal included
    assert all(len(rates) == 1 for rates in per_cpu.values()), per_cpu
    for letter in "cmr":
        ratio = per_cpu[f"{letter}8i"].pop() / per_cpu[f"{letter}7i"].pop()
        assert 1.04 < ratio < 1.06
    for size in (
        "large",
        "xlarge",
        "2xlarge",
        "4xlarge",
        "8xlarge",
        "12xlarge",
        "16xlarge",
        "24xlarge",
        "48xlarge",
    ):
        for family in ("c7i", "m7i", "r7i", "c8i", "m8i", "r8i"):
            catalogue.get(f"{family}.{size}")
    for family in ("c7i", "m7i", "r7i"):
        assert catalogue.get(f"{family}.metal-24xl").cpus == 96
        assert catalogue.get(f"{family}.metal-48xl").cpus == 192


def test_gcp_prices_follow_the_per_resource_rates() -> None:
    catalogue = load_catalogue("gcp")
    assert catalogue.region == "us-central1"
    rates = {"n2": (0.031611, 0.004237), "c3": (0.03465, 0.003938)}
    for t in catalogue.host_types:
        per_cpu, per_gib = rates[t.name[:2]]
        assert t.hourly_cost == pytest.approx(
            t.cpus * per_cpu + t.memory_mib / 1024 * per_gib, abs=1e-6
        )
        assert t.nested_virt
    assert catalogue.get("n2-standard-128").memory_mib == 512 * 1024
    assert catalogue.get("n2-highcpu-96").memory_mib == 96 * 1024
    assert catalogue.get("c3-highmem-176").memory_mib == 1408 * 1024
    assert [t.cpus for t in catalogue.host_types if t.family == "c3-highcpu"] == [
        4,
        8,
        22,
        44,
        88,
        176,
    ]


def test_unknown_host_type_suggests_close_names() -> None:
    catalogue = load_catalogue("aws")
    with pytest.raises(PlacementError) as caught:
        catalogue.get("r7i.48xlage")
    assert "r7i.48xlage" in caught.value.message
    assert "r7i.48xlarge" in caught.value.message
    assert caught.value.nearest == "r7i.48xlarge"
    assert caught.value.dimension == "host_type"


def test_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(PlacementError) as caught:
        load_catalogue("azure")
    assert "azure" in caught.value.message
    for provider in PROVIDERS:
        assert provider in caught.value.message


def _raw(**changes: object) -> dict[str, object]:
    host = {
        "name": "x.large",
        "cpus": 2,
        "memory_mib": 4096,
        "hourly_cost": 0.1,
        "nested_virt": False,
        "family": "x",
    }
    host.update(changes.pop("host", {}))  # type: ignore[arg-type]
    data: dict[str, object] = {
        "provider": "p",
        "region": "r",
        "currency": "USD",
        "source": "https://example.invalid/prices",
        "as_of": "2026-01-01",
        "note": "n",
        "host_types": [host],
    }
    data.update(changes)
    return data


def test_catalogue_from_dict_accepts_a_minimal_catalogue() -> None:
    catalogue = catalogue_from_dict(_raw())
    assert catalogue.get("x.large") == HostType("x.large", 2, 4096, 0.1, False, "x")


@pytest.mark.parametrize(
    "changes",
    [
        {"source": ""},
        {"as_of": 7},
        {"host_types": []},
        {"host": {"cpus": 0}},
        {"host": {"cpus": True}},
        {"host": {"memory_mib": 1.5}},
        {"host": {"hourly_cost": -1}},
        {"host": {"hourly_cost": float("nan")}},
        {"host": {"nested_virt": "yes"}},
        {"host": {"name": ""}},
    ],
)
def test_catalogue_from_dict_rejects_malformed_data(changes: dict[str, object]) -> None:
    with pytest.raises(PlacementError, match="malformed"):
        catalogue_from_dict(_raw(**changes))


def test_catalogue_from_dict_rejects_duplicates_and_missing_keys() -> None:
    data = _raw()
    data["host_types"] = data["host_types"] * 2  # type: ignore[operator]
    with pytest.raises(PlacementError, match="twice"):
        catalogue_from_dict(data)
    data = _raw()
    del data["note"]
    with pytest.raises(PlacementError, match="note"):
        catalogue_from_dict(data)
