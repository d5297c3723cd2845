#!/usr/bin/env python3
"""Refresh ravel/plan/catalogues/aws.json from EC2 itself, with your own AWS credentials.

    .venv/bin/python tools/refresh_aws_catalogue.py [--region us-east-1] [--families c7i,m7i,...]
                                                    [--output ravel/plan/catalogues/aws.json]

What it asks (read-only calls; nothing is created or billed):
- EC2 DescribeInstanceTypes for every size of each family: vCPUs and memory;
- EC2 DescribeInstanceTypes with the filter processor-info.supported-features =
  nested-virtualization: the types where a guest gets hardware virtualization (ravel launches
  them with CpuOptions.NestedVirtualization=enabled and runs QEMU with KVM there); *.metal
  types have it natively;
- the AWS Price List Query API (pricing:GetProducts, endpoint in us-east-1): the on-demand
  Linux, shared-tenancy hourly price of each type in the region.

The catalogue written says its date and these sources, so a plan's prices can be traced. The
families default to those of the current catalogue. Types EC2 does not list in the region, or
that have no price, are left out (and named on stderr).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "ravel" / "plan" / "catalogues" / "aws.json"
NESTED_FILTER = {"Name": "processor-info.supported-features", "Values": ["nested-virtualization"]}
PRICE_FILTERS = {  # one on-demand Linux price per type: shared tenancy, no licensed software
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
    "licenseModel": "No License required",
}


def instance_types(ec2: Any, families: Iterable[str]) -> list[dict[str, Any]]:
    pages = ec2.get_paginator("describe_instance_types").paginate(
        Filters=[{"Name": "instance-type", "Values": [f"{f}.*" for f in families]}])
    return [t for page in pages for t in page["InstanceTypes"]]


def nested_capable(ec2: Any) -> set[str]:
    pages = ec2.get_paginator("describe_instance_types").paginate(Filters=[NESTED_FILTER])
    return {t["InstanceType"] for page in pages for t in page["InstanceTypes"]}


def hourly_price(pricing: Any, region: str, instance_type: str) -> float | None:
    filters = [{"Type": "TERM_MATCH", "Field": k, "Value": v}
               for k, v in {**PRICE_FILTERS, "instanceType": instance_type, "regionCode": region}.items()]
    got = pricing.get_products(ServiceCode="AmazonEC2", Filters=filters, MaxResults=10)
    return on_demand_usd(got.get("PriceList") or [])


def on_demand_usd(price_list: Iterable[str | Mapping[str, Any]]) -> float | None:
    """The on-demand hourly USD price in a GetProducts answer (each item a JSON document)."""
    for raw in price_list:
        doc = json.loads(raw) if isinstance(raw, str) else raw
        for term in (doc.get("terms", {}).get("OnDemand") or {}).values():
            for dim in (term.get("priceDimensions") or {}).values():
                usd = (dim.get("pricePerUnit") or {}).get("USD")
                if dim.get("unit") == "Hrs" and usd is not None and float(usd) > 0:
                    return float(usd)
    return None


def build(region: str, types: list[dict[str, Any]], nested: set[str], prices: Mapping[str, float],
          today: datetime.date) -> dict[str, Any]:
    """The catalogue document ravel reads (plan/catalogue.py), from what the APIs answered."""
    entries = []
    for t in sorted(types, key=lambda t: (t["InstanceType"].split(".")[0], t["VCpuInfo"]["DefaultVCpus"],
                                          t["InstanceType"])):
        name = t["InstanceType"]
        if name not in prices:
            continue
        entries.append({
            "name": name,
            "cpus": int(t["VCpuInfo"]["DefaultVCpus"]),
            "memory_mib": int(t["MemoryInfo"]["SizeInMiB"]),
            "hourly_cost": prices[name],
            # a metal type runs QEMU on the hardware itself
            "nested_virt": name in nested or bool(t.get("BareMetal")),
            "family": name.split(".")[0],
        })
    return {
        "provider": "aws",
        "region": region,
        "currency": "USD",
        "source": "EC2 DescribeInstanceTypes and the AWS Price List Query API (pricing:GetProducts, "
                  "on-demand Linux, shared tenancy), fetched live by tools/refresh_aws_catalogue.py",
        "as_of": today.isoformat(),
        "note": f"On-demand Linux prices for {region} as the AWS Price List Query API answered on "
                f"{today.isoformat()}; refresh with tools/refresh_aws_catalogue.py before trusting them "
                "for budgeting. nested_virt is what EC2 reported (see nested_virt_source).",
        "nested_virt_source": "EC2 DescribeInstanceTypes filter processor-info.supported-features = "
                              f"nested-virtualization in {region} on {today.isoformat()}, and *.metal",
        "host_types": entries,
    }


def main(argv: list[str] | None = None) -> int:
    current = json.loads(CATALOGUE.read_text())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", default=current["region"])
    parser.add_argument("--families", default=",".join(sorted({t["family"] for t in current["host_types"]})))
    parser.add_argument("--output", type=Path, default=CATALOGUE)
    args = parser.parse_args(argv)
    import boto3  # here: the pure parts above are tested without it

    ec2 = boto3.client("ec2", region_name=args.region)
    pricing = boto3.client("pricing", region_name="us-east-1")  # the Price List API's endpoint
    types = instance_types(ec2, args.families.split(","))
    nested = nested_capable(ec2)
    prices, missing = {}, []
    for t in types:
        price = hourly_price(pricing, args.region, t["InstanceType"])
        if price is None:
            missing.append(t["InstanceType"])
        else:
            prices[t["InstanceType"]] = price
    doc = build(args.region, types, nested, prices, datetime.date.today())
    sys.path.insert(0, str(ROOT))
    from ravel.plan.catalogue import catalogue_from_dict

    catalogue_from_dict(doc, origin="the refreshed catalogue")  # ravel must be able to read it
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    if missing:
        print(f"no on-demand price for: {', '.join(sorted(missing))} (left out)", file=sys.stderr)
    kvm = sum(e["nested_virt"] for e in doc["host_types"])
    print(f"{args.output}: {len(doc['host_types'])} types, {kvm} with nested virtualization")
    return 0


if __name__ == "__main__":
    sys.exit(main())
