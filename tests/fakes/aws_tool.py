"""Look at (and tamper with) the AWS fake from inside its network namespace, as a test would
with the AWS console: `python tests/fakes/aws_tool.py COMMAND`, JSON on stdout.

    inventory                      every instance, group, key pair, volume, VPC the fake holds
    ami                            an image id the fake knows
    orphan APP STATE_TAG AMI       a group, key pair and instance tagged as ravel's, made by hand
    drop-default-vpc               delete the region's default VPC (and its subnets)
    auth on|off                    moto's request authentication (on: unknown keys are rejected)
    delay SECONDS                  added latency per AWS call
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

import boto3


def ec2():
    return boto3.client("ec2")


def _tags(r):
    return {t["Key"]: t["Value"] for t in r.get("Tags", []) or []}


def inventory() -> dict:
    c = ec2()
    instances = [i for r in c.describe_instances()["Reservations"] for i in r["Instances"]]
    return {
        "instances": [{"id": i["InstanceId"], "state": i["State"]["Name"], "type": i["InstanceType"],
                       "tags": _tags(i), "metadata": i.get("MetadataOptions", {}), "vpc": i.get("VpcId"),
                       "subnet": i.get("SubnetId"), "image": i.get("ImageId"), "key": i.get("KeyName"),
                       "groups": [g["GroupId"] for g in i.get("SecurityGroups", [])]} for i in instances],
        "groups": [{"id": g["GroupId"], "name": g["GroupName"], "vpc": g["VpcId"], "tags": _tags(g),
                    "ingress": g["IpPermissions"], "egress": g["IpPermissionsEgress"]}
                   for g in c.describe_security_groups()["SecurityGroups"]],
        "keys": [{"name": k["KeyName"], "tags": _tags(k)} for k in c.describe_key_pairs()["KeyPairs"]],
        "volumes": [{"id": v["VolumeId"], "state": v["State"], "tags": _tags(v),
                     "attached": [a["InstanceId"] for a in v.get("Attachments", [])]}
                    for v in c.describe_volumes()["Volumes"]],
        "vpcs": [{"id": v["VpcId"], "default": v.get("IsDefault", False), "tags": _tags(v)}
                 for v in c.describe_vpcs()["Vpcs"]],
        "gateways": [{"id": g["InternetGatewayId"], "tags": _tags(g)}
                     for g in c.describe_internet_gateways()["InternetGateways"]],
    }


def orphan(app: str, state: str, ami: str) -> dict:
    c = ec2()
    tags = [{"Key": "ravel:app", "Value": app}, {"Key": "ravel:state", "Value": state}]
    name = f"ravel-{state}-{app}"
    vpc = c.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    sg = c.create_security_group(GroupName=name, Description="by hand", VpcId=vpc,
                                 TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}])["GroupId"]
    c.create_key_pair(KeyName=name, TagSpecifications=[{"ResourceType": "key-pair", "Tags": tags}])
    host = tags + [{"Key": "ravel:host", "Value": "host-1"}]
    iid = c.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="c7i.large", SecurityGroupIds=[sg],
                          TagSpecifications=[{"ResourceType": "instance", "Tags": host}])["Instances"][0]["InstanceId"]
    return {"group": sg, "key": name, "instance": iid}


def drop_default_vpc() -> dict:
    c = ec2()
    gone = []
    for v in c.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]:
        for s in c.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [v["VpcId"]]}])["Subnets"]:
            c.delete_subnet(SubnetId=s["SubnetId"])
        for g in c.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [v["VpcId"]]}])["InternetGateways"]:
            c.detach_internet_gateway(InternetGatewayId=g["InternetGatewayId"], VpcId=v["VpcId"])
            c.delete_internet_gateway(InternetGatewayId=g["InternetGatewayId"])
        c.delete_vpc(VpcId=v["VpcId"])
        gone.append(v["VpcId"])
    return {"deleted": gone}


def self_terminate(app: str) -> dict:
    """What EC2 does when an app's hosts power themselves off at its expiry with
    InstanceInitiatedShutdownBehavior=terminate: the instances go, their group and key pair stay."""
    client = ec2()
    found = client.describe_instances(Filters=[{"Name": "tag:ravel:app", "Values": [app]},
                                               {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    ids = [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]
    if ids:
        client.terminate_instances(InstanceIds=ids)
    return {"terminated": ids}


def post(path: str, body: str) -> dict:
    url = os.environ["AWS_ENDPOINT_URL"].rstrip("/") + path
    # text/plain: a form-encoded body would be parsed away before moto reads it
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return {"status": r.status}


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "inventory":
        out = inventory()
    elif cmd == "ami":
        out = {"ami": ec2().describe_images(Owners=["amazon"])["Images"][0]["ImageId"]}
    elif cmd == "orphan":
        out = orphan(*args)
    elif cmd == "self-terminate":
        out = self_terminate(args[0])
    elif cmd == "drop-default-vpc":
        out = drop_default_vpc()
    elif cmd == "auth":
        out = post("/moto-api/reset-auth", "0" if args[0] == "on" else "inf")
    elif cmd == "delay":
        out = post("/ravel-fake/delay", args[0])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(out, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
