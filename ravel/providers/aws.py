"""AWS hosts: EC2 instances made with boto3 in the user's own account.

Credentials, region and endpoint come from boto3's standard chain (environment, profiles,
instance role; `AWS_ENDPOINT_URL` for a test endpoint such as moto's server), nothing bespoke.

Per app, ravel makes one security group (UDP 4789 only from members of the group, TCP 22 only
from `--ssh-from`, and each exposed service's port from its `allow` or the SSH source, see
`expose`), one imported key pair (ravel's user key) and one instance per host, in the
default VPC (or a VPC ravel makes once per state when the account has none). Everything carries
the tags `ravel:state`, `ravel:app` and (instances, volumes, interfaces) `ravel:host`, so destroy
and `ravel gc` find exactly what this state made.

Idempotency: every create looks for its resource by tags first; RunInstances carries a
ClientToken the pipeline recorded before the call, so a retried or resumed call returns the
instance the first one made instead of a second one (moto ignores ClientToken; the tag lookup
is what makes a resumed publish converge there).

Nested virtualization: CpuOptions={"NestedVirtualization": "enabled"} on c8i/m8i/r8i (botocore
knows the member and its enum enabled|disabled; moto 5.2 accepts and ignores it); *.metal types
have VT-x without it; everything else runs guests under TCG.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import EnvironmentProblem, ProviderError
from ..paths import Paths
from ..plan.catalogue import load_catalogue
from ..plan.mtu import underlay_mtu
from ..plan.network import ServiceForward
from ..render.cloud_init import user_data
from .base import Exposure, Host, HostSpec
from .cloud import (
    boot_data,
    cloud_host,
    exposures_for,
    poll,
    remaining,
    resource_name,
    ssh_from,
    ssh_transport,
    user_public_key,
)

TAG_APP, TAG_HOST, TAG_STATE, TAG_VPC = "ravel:app", "ravel:host", "ravel:state", "ravel:vpc"
DEBIAN_12_SSM = "/aws/service/debian/release/12/latest/amd64"
NESTED_FAMILIES = ("c8i", "m8i", "r8i")  # CpuOptions NestedVirtualization; *.metal needs nothing
MTU = underlay_mtu("aws")  # EC2 jumbo frames inside a VPC
ROOT_GIB = int(os.environ.get("RAVEL_AWS_ROOT_GIB", "64"))  # VM disks live on the root volume
ALIVE = ["pending", "running", "stopping", "stopped"]
NOT_GONE = ALIVE + ["shutting-down"]
CREATED_VPC_CIDR = "10.77.0.0/16"
CREATED_SUBNET_CIDR = "10.77.0.0/20"
AUTH_CODES = {"AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
              "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId", "IncompleteSignature",
              "MissingAuthenticationToken"}
DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}
SG_DELETE_WAIT_S = 180.0  # an SG stays "in use" until the interfaces of terminated instances go
# the description of every ingress range ravel opens for an exposed service: how they are told
# apart from the group's own two rules, which the exposer never touches (and the other way round)
SERVICE_RULE = "ravel: exposed service"


@dataclass
class _AppInfra:
    vpc: str
    subnets: list[tuple[str, str]]  # (subnet id, availability zone), sorted by zone
    group: str
    key_name: str
    # the app's live instances by host, listed once per run so hosts need not be looked up alone
    listed: dict[str, list[dict[str, Any]]]


class AwsProvider:
    name = "aws"
    transports = ("ssh",)  # cloud hosts are reached over SSH with their pinned host key
    # a timer on each host powers it off at the expiry; InstanceInitiatedShutdownBehavior makes
    # that a terminate (or a stop): render/cloud_init.py
    lifetime = "host-timer"

    def __init__(self, paths: Paths, session: Any = None) -> None:
        self.paths = paths
        self.tag = paths.tag
        self._session = session
        self._lock = threading.Lock()
        self._app_locks: dict[str, threading.Lock] = {}
        self._infra: dict[str, _AppInfra] = {}
        self._clients: dict[str, Any] = {}
        self._cache: dict[tuple[str, str], Any] = {}
        self.nested_types = {t.name for t in load_catalogue("aws").host_types if t.nested_virt}
        self.default_region = load_catalogue("aws").region

    # -- SDK plumbing --------------------------------------------------------------------------
    def _client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                try:
                    import boto3
                    from botocore.config import Config
                except ImportError:  # pragma: no cover - boto3 is a dependency
                    raise EnvironmentProblem("boto3 is not installed", hint="pip install boto3") from None
                session = self._session or boto3.Session()
                self._session = session
                region = session.region_name or self.default_region
                # 64 pooled connections: every host of a big app is provisioned at once
                config = Config(retries={"max_attempts": 6, "mode": "standard"}, connect_timeout=10,
                                read_timeout=60, max_pool_connections=64)
                self._clients[service] = session.client(service, region_name=region, config=config)
            return self._clients[service]

    @property
    def ec2(self) -> Any:
        return self._client("ec2")

    @property
    def region(self) -> str:
        return self.ec2.meta.region_name

    def _tags(self, app: str | None = None, host: str | None = None, name: str | None = None) -> list[dict[str, str]]:
        tags = [{"Key": TAG_STATE, "Value": self.tag}]
        if app:
            tags.append({"Key": TAG_APP, "Value": app})
        if host:
            tags.append({"Key": TAG_HOST, "Value": host})
        if name:
            tags.append({"Key": "Name", "Value": name})
        return tags

    def _filters(self, app: str | None = None, host: str | None = None, any_state: bool = False) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"Name": "tag-key", "Values": [TAG_APP]}] if any_state else [
            {"Name": f"tag:{TAG_STATE}", "Values": [self.tag]}]
        if app:
            out.append({"Name": f"tag:{TAG_APP}", "Values": [app]})
        if host:
            out.append({"Name": f"tag:{TAG_HOST}", "Values": [host]})
        return out

    # -- preflight -----------------------------------------------------------------------------
    def preflight(self) -> None:
        """The credentials work: one STS call before anything is made, so a missing or rejected
        credential is one line and leaves nothing behind."""
        with _aws("checking the credentials"):
            self._client("sts").get_caller_identity()

    # -- per-app infrastructure ------------------------------------------------------------------
    def _app_lock(self, app: str) -> threading.Lock:
        with self._lock:
            return self._app_locks.setdefault(app, threading.Lock())

    def _ensure_infra(self, app: str, cidr: str, deadline: float) -> _AppInfra:
        with self._app_lock(app):
            if app not in self._infra:
                vpc, subnets = self._network(deadline)
                group = self._security_group(app, vpc, cidr)
                key_name = self._key_pair(app)
                listed: dict[str, list[dict[str, Any]]] = {}
                for i in self._instances(self._filters(app), ALIVE):
                    listed.setdefault(_tag(i, TAG_HOST) or "", []).append(i)
                self._infra[app] = _AppInfra(vpc, subnets, group, key_name, listed)
            return self._infra[app]

    def _network(self, deadline: float) -> tuple[str, list[tuple[str, str]]]:
        with self._lock:
            cached = self._cache.get(("network", ""))
        if cached:
            return cached
        with _aws("looking for the default VPC"):
            vpcs = self.ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
        if vpcs:
            vpc = vpcs[0]["VpcId"]
            with _aws(f"listing the subnets of {vpc}"):
                subnets = self.ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                                             {"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
        else:
            vpc, subnets = self._own_vpc(deadline)
        found = sorted((s["SubnetId"], s["AvailabilityZone"]) for s in subnets)
        found.sort(key=lambda s: s[1])
        if not found:
            raise ProviderError(f"VPC {vpc} in {self.region} has no subnet ravel can use",
                                hint="give the VPC a default subnet per zone, or delete it so ravel makes its own")
        with self._lock:
            self._cache[("network", "")] = (vpc, found)
        return vpc, found

    def _own_vpc(self, deadline: float) -> tuple[str, list[dict[str, Any]]]:
        """The account has no default VPC: make one for this state (found again by its tags)."""
        ec2 = self.ec2
        name = resource_name(self.tag, "vpc")
        mine = [{"Name": f"tag:{TAG_STATE}", "Values": [self.tag]}, {"Name": f"tag:{TAG_VPC}", "Values": ["1"]}]
        tags = self._tags(name=name) + [{"Key": TAG_VPC, "Value": "1"}]
        with _aws("making a VPC"):
            vpcs = ec2.describe_vpcs(Filters=mine)["Vpcs"]
            if vpcs:
                vpc = vpcs[0]["VpcId"]
            else:
                vpc = ec2.create_vpc(CidrBlock=CREATED_VPC_CIDR, TagSpecifications=[
                    {"ResourceType": "vpc", "Tags": tags}])["Vpc"]["VpcId"]
            ec2.get_waiter("vpc_available").wait(VpcIds=[vpc], WaiterConfig=_waiter(deadline, 2))
            gws = ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc]}])["InternetGateways"]
            if not gws:
                gws = ec2.describe_internet_gateways(Filters=mine)["InternetGateways"]
                gw = gws[0]["InternetGatewayId"] if gws else ec2.create_internet_gateway(TagSpecifications=[
                    {"ResourceType": "internet-gateway", "Tags": tags}])["InternetGateway"]["InternetGatewayId"]
                ec2.attach_internet_gateway(InternetGatewayId=gw, VpcId=vpc)
            else:
                gw = gws[0]["InternetGatewayId"]
            tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                                        {"Name": "association.main", "Values": ["true"]}])["RouteTables"]
            if tables and not any(r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in tables[0]["Routes"]):
                ec2.create_route(RouteTableId=tables[0]["RouteTableId"], DestinationCidrBlock="0.0.0.0/0", GatewayId=gw)
            subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
            if not subnets:
                zone = min(z["ZoneName"] for z in ec2.describe_availability_zones(
                    Filters=[{"Name": "state", "Values": ["available"]}])["AvailabilityZones"])
                subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=CREATED_SUBNET_CIDR, AvailabilityZone=zone,
                                           TagSpecifications=[{"ResourceType": "subnet", "Tags": tags}])["Subnet"]
                ec2.modify_subnet_attribute(SubnetId=subnet["SubnetId"], MapPublicIpOnLaunch={"Value": True})
                subnets = [subnet]
        return vpc, subnets

    def _security_group(self, app: str, vpc: str, cidr: str) -> str:
        name = resource_name(self.tag, app)
        ec2 = self.ec2
        with _aws(f"making security group {name}"):
            groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]},
                                                           {"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"]
            if groups:
                group = groups[0]
                gid = group["GroupId"]
            else:
                try:
                    gid = ec2.create_security_group(
                        GroupName=name, VpcId=vpc, Description=f"ravel app {app}: VXLAN between its hosts, SSH from {cidr}",
                        TagSpecifications=[{"ResourceType": "security-group", "Tags": self._tags(app, name=name)}])["GroupId"]
                except _client_error() as exc:
                    if _code(exc) != "InvalidGroup.Duplicate":
                        raise
                    gid = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]},
                                                                {"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"][0]["GroupId"]
                group = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
            self._reconcile_ingress(app, gid, group.get("IpPermissions", []), cidr)
        return gid

    def _reconcile_ingress(self, app: str, gid: str, current: list[dict[str, Any]], cidr: str) -> None:
        """Exactly two rules: UDP 4789 from the group itself, TCP 22 from `cidr` (exposed
        services' rules are the exposer's: see `expose`)."""
        v6 = ":" in cidr
        want = {("udp", 4789, "group", gid), ("tcp", 22, "cidr6" if v6 else "cidr", cidr)}
        have = _rules(current, services=False)
        extra, missing = have - want, want - have
        if extra:
            self.ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[_permission(r) for r in sorted(extra)])
        if missing:
            self.ec2.authorize_security_group_ingress(
                GroupId=gid, IpPermissions=[_permission(r) for r in sorted(missing)],
                TagSpecifications=[{"ResourceType": "security-group-rule", "Tags": self._tags(app)}])

    # -- exposed services (ServiceExposer) ------------------------------------------------------
    def expose(self, app: str, hosts: Mapping[str, Host], forwards: Sequence[ServiceForward],
               current: Sequence[Exposure]) -> list[Exposure]:
        """One ingress rule on the app's group per exposed port, protocol and source: the
        service's `allow`, else the address SSH is allowed from (the user's). The host runtime
        forwards the port on the host's uplink to the guest (its desired document's
        router.expose). A converged app costs one DescribeSecurityGroups and changes nothing."""
        exposed = exposures_for(hosts, forwards)
        groups = {str(hosts[e.host].extra.get("security_group") or "") for e in exposed}
        groups.discard("")
        if not groups:
            groups = {g["GroupId"] for g in self._groups(app)}
        want = {(e.protocol, e.host_port, "cidr6" if ":" in src else "cidr", src)
                for e in exposed for src in e.extra["sources"]}
        for gid in sorted(groups):
            self._reconcile_services(app, gid, want)
        return exposed

    def unexpose(self, app: str, current: Sequence[Exposure]) -> None:
        for group in self._groups(app):
            self._reconcile_services(app, group["GroupId"], set(), group.get("IpPermissions", []))

    def _reconcile_services(self, app: str, gid: str, want: set[tuple[str, int, str, str]],
                            perms: list[dict[str, Any]] | None = None) -> None:
        with _aws(f"opening exposed services' ports on security group {gid}"):
            if perms is None:
                groups = self.ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
                perms = groups[0].get("IpPermissions", []) if groups else []
            have = _rules(perms, services=True)
            extra, missing = have - want, want - have
            if extra:
                self.ec2.revoke_security_group_ingress(
                    GroupId=gid, IpPermissions=[_permission(r, SERVICE_RULE) for r in sorted(extra)])
            if missing:
                self.ec2.authorize_security_group_ingress(
                    GroupId=gid, IpPermissions=[_permission(r, SERVICE_RULE) for r in sorted(missing)],
                    TagSpecifications=[{"ResourceType": "security-group-rule", "Tags": self._tags(app)}])

    def _key_pair(self, app: str) -> str:
        name = resource_name(self.tag, app)
        with _aws(f"importing key pair {name}"):
            found = self.ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [name]}])["KeyPairs"]
            if not found:
                try:
                    self.ec2.import_key_pair(KeyName=name, PublicKeyMaterial=user_public_key(self.paths).encode(),
                                             TagSpecifications=[{"ResourceType": "key-pair", "Tags": self._tags(app, name=name)}])
                except _client_error() as exc:
                    if _code(exc) != "InvalidKeyPair.Duplicate":
                        raise
        return name

    def _image(self, spec: HostSpec) -> str:
        image = spec.image or os.environ.get("RAVEL_AWS_AMI")
        if image:
            return image
        def fetch() -> str:
            try:
                with _aws(f"reading the Debian 12 image id from SSM parameter {DEBIAN_12_SSM}"):
                    return self._client("ssm").get_parameter(Name=DEBIAN_12_SSM)["Parameter"]["Value"]
            except ProviderError as exc:
                raise ProviderError(exc.message, hint="pass --host-image ami-... (or set RAVEL_AWS_AMI) to choose "
                                                      "the host image yourself") from None
        return self._cached("ami", DEBIAN_12_SSM, fetch)

    def _cached(self, kind: str, key: str, fetch: Any) -> Any:
        """Fetched once per provider: hosts made in parallel wait for the first to ask, rather
        than all asking the same thing at once."""
        with self._lock:
            lock = self._app_locks.setdefault(f"cache:{kind}:{key}", threading.Lock())
        with lock:
            with self._lock:
                if (kind, key) in self._cache:
                    return self._cache[(kind, key)]
            value = fetch()
            with self._lock:
                self._cache[(kind, key)] = value
            return value

    def _root_device(self, image: str) -> str:
        def fetch() -> str:
            with _aws(f"looking up image {image}"):
                images = self.ec2.describe_images(ImageIds=[image])["Images"]
            if not images:
                raise ProviderError(f"image {image} does not exist in {self.region}",
                                    hint="check --host-image / RAVEL_AWS_AMI and the region")
            return images[0].get("RootDeviceName") or "/dev/xvda"
        return self._cached("root", image, fetch)

    def _type_facts(self, itype: str) -> dict[str, Any]:
        """What AWS says the instance type is: hypervisor (nitro | xen) and bare metal."""
        def fetch() -> dict[str, Any]:
            try:
                with _aws(f"describing instance type {itype}"):
                    types = self.ec2.describe_instance_types(InstanceTypes=[itype])["InstanceTypes"]
            except ProviderError:
                return {"hypervisor": "unknown", "bare_metal": None}
            t = types[0] if types else {}
            return {"hypervisor": t.get("Hypervisor") or ("none" if t.get("BareMetal") else "unknown"),
                    "bare_metal": t.get("BareMetal")}
        return self._cached("type", itype, fetch)

    def _subnet_for(self, infra: _AppInfra, itype: str) -> tuple[str, str]:
        """The first zone (by name) that offers the type, so hosts of one type share a zone."""
        def offered() -> set[str]:
            try:
                with _aws(f"listing the zones that offer {itype}"):
                    pages = self.ec2.get_paginator("describe_instance_type_offerings").paginate(
                        LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [itype]}])
                    return {o["Location"] for page in pages for o in page["InstanceTypeOfferings"]}
            except ProviderError:
                return set()
        zones = self._cached("offer", itype, offered)
        for subnet in infra.subnets:
            if not zones or subnet[1] in zones:
                return subnet
        raise ProviderError(f"no subnet of {infra.vpc} is in a zone that offers {itype} "
                            f"(zones: {', '.join(sorted(zones))})")

    # -- hosts ---------------------------------------------------------------------------------
    def _instances(self, filters: list[dict[str, Any]], states: list[str]) -> list[dict[str, Any]]:
        with _aws("listing instances"):
            pages = self.ec2.get_paginator("describe_instances").paginate(
                Filters=filters + [{"Name": "instance-state-name", "Values": states}])
            return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def ensure_host(self, spec: HostSpec) -> Host:
        deadline = time.monotonic() + remaining(spec.deadline)
        cidr = ssh_from(spec.ssh_from)
        image = self._image(spec)  # before anything is made: a bad image id makes nothing
        infra = self._ensure_infra(spec.app, cidr, deadline)
        with self._lock:
            found = sorted(infra.listed.get(spec.name, []), key=lambda i: i["LaunchTime"])
        if len(found) > 1:  # made behind ravel's back, or by a tool that lost track: keep the oldest
            self._terminate([i["InstanceId"] for i in found[1:]], deadline)
        if found:
            instance = found[0]
            if instance["State"]["Name"] in ("stopping", "stopped"):
                with _aws(f"starting {spec.name} ({instance['InstanceId']})"):
                    self.ec2.get_waiter("instance_stopped").wait(InstanceIds=[instance["InstanceId"]],
                                                                 WaiterConfig=_waiter(deadline))
                    self.ec2.start_instances(InstanceIds=[instance["InstanceId"]])
        else:
            instance = self._run(spec, image, infra, deadline)
        iid = instance["InstanceId"]
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=_waiter(deadline))
        except (BotoCoreError, ClientError) as exc:  # WaiterError too: say which host, and that it is recorded
            raise ProviderError(f"{spec.name}: instance {iid} did not reach 'running' in time: {_reason(exc)}",
                                hint=f"it is recorded: `ravel destroy {spec.app}` removes it, a re-run resumes") from None
        with _aws(f"describing {iid}"):
            instance = self.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        with self._lock:
            infra.listed[spec.name] = [instance]
        itype = instance.get("InstanceType", spec.type)
        facts = self._type_facts(itype)
        return cloud_host(spec.app, spec.name, iid, instance.get("PrivateIpAddress", ""),
                          instance.get("PublicIpAddress"), self.paths, {
                              "provider": "aws", "region": self.region,
                              "zone": instance.get("Placement", {}).get("AvailabilityZone"),
                              "instance_type": itype, "image": instance.get("ImageId", image),
                              "hypervisor": facts["hypervisor"], "bare_metal": facts["bare_metal"],
                              "nested_virt": self._nested(itype), "security_group": infra.group,
                              "ssh_from": cidr,
                          })

    def _nested(self, itype: str) -> bool:
        return itype.split(".")[0] in NESTED_FAMILIES

    def _run(self, spec: HostSpec, image: str, infra: _AppInfra, deadline: float) -> dict[str, Any]:
        subnet, _zone = self._subnet_for(infra, spec.type)
        name = resource_name(self.tag, spec.app, spec.name)
        tags = self._tags(spec.app, spec.name, name)
        params: dict[str, Any] = {
            "ImageId": image, "InstanceType": spec.type, "MinCount": 1, "MaxCount": 1,
            # recorded by the pipeline before this call: a resumed publish sends the same token
            "ClientToken": (spec.token or uuid.uuid4().hex)[:64],
            "SubnetId": subnet, "SecurityGroupIds": [infra.group], "KeyName": infra.key_name,
            "UserData": user_data(boot_data(self.paths, spec.app, spec.name, MTU, spec.expires)),
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
            "BlockDeviceMappings": [{"DeviceName": self._root_device(image), "Ebs": {
                "VolumeSize": ROOT_GIB, "VolumeType": "gp3", "DeleteOnTermination": True}}],
            "TagSpecifications": [{"ResourceType": kind, "Tags": tags}
                                  for kind in ("instance", "volume", "network-interface")],
        }
        if self._nested(spec.type):
            params["CpuOptions"] = {"NestedVirtualization": "enabled"}
        if spec.expires is not None:
            # the host's own timer powers it off at the expiry (no ravel process needed): EC2
            # then terminates it, or stops it for `action: stop`
            params["InstanceInitiatedShutdownBehavior"] = "stop" if spec.expiry_action == "stop" else "terminate"
        with _aws(f"starting {spec.name} ({spec.type})", host=spec.name):
            instance = self.ec2.run_instances(**params)["Instances"][0]
            if instance["State"]["Name"] in ("shutting-down", "terminated"):
                # the recorded token named an earlier instance of this host, removed since
                # (outside ravel): that one is gone for good, so a new token cannot duplicate it
                params["ClientToken"] = uuid.uuid4().hex
                instance = self.ec2.run_instances(**params)["Instances"][0]
            return instance

    def transport(self, host: Host) -> Any:
        return ssh_transport(host)

    def _terminate(self, ids: list[str], deadline: float) -> None:
        if not ids:
            return
        with _aws(f"terminating {', '.join(ids)}"):
            self.ec2.terminate_instances(InstanceIds=ids)
            self.ec2.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig=_waiter(deadline))

    def delete_host(self, app: str, name: str, host_id: int) -> None:
        deadline = time.monotonic() + remaining(None)
        ids = [i["InstanceId"] for i in self._instances(self._filters(app, name), NOT_GONE)]
        with self._lock:
            if app in self._infra:
                self._infra[app].listed.pop(name, None)
        self._terminate(ids, deadline)
        self._release_if_unused(app, deadline)

    def _release_if_unused(self, app: str, deadline: float) -> None:
        """The app's group and key go with its last instance. Hosts are deleted in parallel: each
        waits for its own instance to be terminated first, so the last one to finish sees none."""
        if self._instances(self._filters(app), NOT_GONE):
            return
        self._delete_groups(self._groups(app), deadline)
        self._delete_keys(self._keys(app))
        with self._lock:
            self._infra.pop(app, None)

    def _groups(self, app: str | None, any_state: bool = False) -> list[dict[str, Any]]:
        with _aws("listing security groups"):
            return self.ec2.describe_security_groups(Filters=self._filters(app, any_state=any_state))["SecurityGroups"]

    def _keys(self, app: str | None, any_state: bool = False) -> list[dict[str, Any]]:
        with _aws("listing key pairs"):
            return self.ec2.describe_key_pairs(Filters=self._filters(app, any_state=any_state))["KeyPairs"]

    def _delete_groups(self, groups: list[dict[str, Any]], deadline: float) -> None:
        for group in groups:
            gid = group["GroupId"]

            def gone(gid: str = gid) -> bool | None:
                try:
                    self.ec2.delete_security_group(GroupId=gid)
                    return True
                except _client_error() as exc:
                    if _code(exc) == "InvalidGroup.NotFound":
                        return True
                    if _code(exc) == "DependencyViolation":
                        return None  # network interfaces of terminated instances linger a while
                    raise ProviderError(f"deleting security group {gid}: {_reason(exc)}") from None

            poll(gone, min(deadline, time.monotonic() + SG_DELETE_WAIT_S), f"deleting security group {gid}",
                 first=2.0, ceiling=10.0)

    def _delete_keys(self, pairs: list[dict[str, Any]]) -> None:
        for pair in pairs:
            with _aws(f"deleting key pair {pair['KeyName']}"):
                self.ec2.delete_key_pair(KeyName=pair["KeyName"])  # by name: moto ignores KeyPairId

    def leftover_hosts(self, app: str) -> list[str]:
        found = self._instances(self._filters(app), NOT_GONE)
        return sorted({_tag(i, TAG_HOST) for i in found if _tag(i, TAG_HOST)})

    def cleanup(self) -> None:
        """The VPC ravel made (only when the account had no default VPC) goes with the last group."""
        with _aws("looking for ravel's VPC"):
            vpcs = self.ec2.describe_vpcs(Filters=[{"Name": f"tag:{TAG_STATE}", "Values": [self.tag]},
                                                   {"Name": f"tag:{TAG_VPC}", "Values": ["1"]}])["Vpcs"]
        for vpc in vpcs:
            vid = vpc["VpcId"]
            in_vpc = [{"Name": "vpc-id", "Values": [vid]}]
            groups = [g for g in self.ec2.describe_security_groups(Filters=in_vpc)["SecurityGroups"]
                      if g["GroupName"] != "default"]
            if groups or self._instances(in_vpc, NOT_GONE):
                continue
            with _aws(f"deleting ravel's VPC {vid}"):
                for s in self.ec2.describe_subnets(Filters=in_vpc)["Subnets"]:
                    self.ec2.delete_subnet(SubnetId=s["SubnetId"])
                for gw in self.ec2.describe_internet_gateways(
                        Filters=[{"Name": "attachment.vpc-id", "Values": [vid]}])["InternetGateways"]:
                    self.ec2.detach_internet_gateway(InternetGatewayId=gw["InternetGatewayId"], VpcId=vid)
                    self.ec2.delete_internet_gateway(InternetGatewayId=gw["InternetGatewayId"])
                self.ec2.delete_vpc(VpcId=vid)
            with self._lock:
                self._cache.pop(("network", ""), None)

    # -- ravel gc ----------------------------------------------------------------------------------
    def _orphans(self, known_apps: set[str], any_state: bool) -> tuple[list[dict], list[dict], list[dict]]:
        def lost(resource: dict[str, Any]) -> bool:
            return _tag(resource, TAG_APP) not in known_apps or (any_state and _tag(resource, TAG_STATE) != self.tag)

        instances = [i for i in self._instances(self._filters(any_state=any_state), NOT_GONE) if lost(i)]
        groups = [g for g in self._groups(None, any_state) if lost(g)]
        pairs = [k for k in self._keys(None, any_state) if lost(k)]
        return instances, groups, pairs

    def garbage(self, known_apps: set[str], any_state: bool = False) -> list[str]:
        return self._describe(*self._orphans(known_apps, any_state))

    @staticmethod
    def _describe(instances: list[dict], groups: list[dict], pairs: list[dict]) -> list[str]:
        return ([f"instance {i['InstanceId']} (app {_tag(i, TAG_APP)}, {_tag(i, TAG_HOST) or '?'}, {i['State']['Name']})"
                 for i in instances]
                + [f"security group {g['GroupId']} ({g['GroupName']})" for g in groups]
                + [f"key pair {k['KeyName']}" for k in pairs])

    def collect(self, known_apps: set[str], any_state: bool = False) -> list[str]:
        instances, groups, pairs = self._orphans(known_apps, any_state)
        removed = self._describe(instances, groups, pairs)
        deadline = time.monotonic() + remaining(None)
        self._terminate([i["InstanceId"] for i in instances if i["State"]["Name"] != "shutting-down"], deadline)
        live = [i["InstanceId"] for i in instances if i["State"]["Name"] == "shutting-down"]
        if live:
            with _aws("waiting for instances to terminate"):
                self.ec2.get_waiter("instance_terminated").wait(InstanceIds=live, WaiterConfig=_waiter(deadline))
        self._delete_groups(groups, deadline)
        self._delete_keys(pairs)
        self.cleanup()
        return removed


# -- helpers -------------------------------------------------------------------------------------

def _rules(perms: list[dict[str, Any]], services: bool) -> set[tuple[str, int, str, str]]:
    """The group's ingress as (protocol, port, kind, source): exposed services' ranges (by their
    description) when `services`, else everything else."""
    out: set[tuple[str, int, str, str]] = set()
    for perm in perms:
        proto, port = perm.get("IpProtocol", ""), perm.get("FromPort", -1)
        if not services:
            out |= {(proto, port, "group", p["GroupId"]) for p in perm.get("UserIdGroupPairs", [])}
        for key, kind, field in (("IpRanges", "cidr", "CidrIp"), ("Ipv6Ranges", "cidr6", "CidrIpv6")):
            out |= {(proto, port, kind, r[field]) for r in perm.get(key, [])
                    if (r.get("Description") == SERVICE_RULE) == services}
    return out


def _permission(rule: tuple[str, int, str, str], description: str = "ravel: SSH from the user") -> dict[str, Any]:
    proto, port, kind, source = rule
    perm: dict[str, Any] = {"IpProtocol": proto, "FromPort": port, "ToPort": port}
    if kind == "group":
        perm["UserIdGroupPairs"] = [{"GroupId": source}]
    elif kind == "cidr6":
        perm["Ipv6Ranges"] = [{"CidrIpv6": source, "Description": description}]
    else:
        perm["IpRanges"] = [{"CidrIp": source, "Description": description}]
    return perm


def _waiter(deadline: float, delay: int = 3) -> dict[str, int]:
    """A boto3 WaiterConfig that gives up at `deadline` (at least one attempt)."""
    return {"Delay": delay, "MaxAttempts": max(1, int(remaining(deadline) // delay) + 1)}


def _tag(resource: dict[str, Any], key: str) -> str | None:
    for t in resource.get("Tags", []) or resource.get("TagSet", []) or []:
        if t.get("Key") == key:
            return t.get("Value")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _client_error() -> type[Exception]:
    from botocore.exceptions import ClientError

    return ClientError


def _code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "") or ""


def _reason(exc: Exception) -> str:
    err = getattr(exc, "response", {}).get("Error", {})
    if err:
        return f"{err.get('Code', '')}: {err.get('Message', '')}".strip(": ")
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@contextlib.contextmanager
def _aws(what: str, host: str | None = None) -> Iterator[None]:
    """boto3's many exception types -> one ProviderError line saying what ravel was doing."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )
    from botocore.parsers import ResponseParserError

    try:
        yield
    except ProviderError:
        raise
    except (NoCredentialsError, PartialCredentialsError):
        raise ProviderError("no AWS credentials found (environment, AWS_PROFILE/~/.aws, or an instance role)",
                            hint="run `aws configure`, or set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY") from None
    except NoRegionError:
        raise ProviderError("no AWS region configured", hint="set AWS_REGION or a region in your profile") from None
    except EndpointConnectionError as exc:
        raise ProviderError(f"cannot reach AWS while {what}: {exc}",
                            hint="check the network, the region and AWS_ENDPOINT_URL") from None
    except ClientError as exc:
        code = _code(exc)
        if code in AUTH_CODES:
            raise ProviderError(f"AWS rejected the credentials while {what}: {_reason(exc)}",
                                hint="check AWS_PROFILE / AWS_ACCESS_KEY_ID and the account's permissions") from None
        who = f"{host}: " if host else ""
        if code in DENIED_CODES:
            raise ProviderError(f"{who}AWS denied {what}: {_reason(exc)}",
                                hint="the credentials work but lack a permission ravel needs (EC2, SSM, STS)") from None
        raise ProviderError(f"{who}AWS refused {what}: {_reason(exc)}") from None
    except (BotoCoreError, ResponseParserError) as exc:  # e.g. an endpoint's HTML error page
        raise ProviderError(f"AWS error while {what}: {_first_line(exc)}") from None
