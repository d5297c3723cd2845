"""GCP hosts: Compute Engine instances made with google-cloud-compute in the user's project.

Credentials come from application default credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's
login, the metadata server); the project from RAVEL_GCP_PROJECT, GOOGLE_CLOUD_PROJECT or the
credentials; the zone from RAVEL_GCP_ZONE (default: the catalogue's region, zone a). The API
endpoint is the client's own `client_options.api_endpoint`, taken from gcloud's setting for it,
CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE, when that is set (a test endpoint): nothing bespoke.

Hosts live on a VPC network ravel makes once per state with jumbo frames (MTU 8896; the
default network's 1460 cannot carry a 1500-byte guest frame plus VXLAN's 50 bytes), unless
RAVEL_GCP_NETWORK names one to use. Per app: two firewall rules by network tag (UDP 4789 only
between the app's hosts, TCP 22 only from --ssh-from), one more per source set of its exposed
services (`-svc-<hash>`, see `expose`) and one instance per host, labelled
`ravel-state`, `ravel-app`, `ravel-host` for clean-up. Debian's GCE images run startup-scripts
and ignore user-data, so the host bootstrap goes in the `startup-script` metadata key.

Idempotency: resources have fixed names (a second insert is refused, 409), and every mutating
call carries a request_id: a retried call after a lost answer is recognised by the API instead of
being applied twice; an instance's request_id derives from the token the pipeline recorded, so
even a publish killed mid-call and re-run sends the same one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Mapping, Sequence

from ..errors import EnvironmentProblem, ProviderError
from ..paths import Paths
from ..plan.catalogue import load_catalogue
from ..plan.mtu import underlay_mtu
from ..plan.network import ServiceForward
from ..render.cloud_init import startup_script
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
)

DEBIAN_12 = "projects/debian-cloud/global/images/family/debian-12"
MTU = underlay_mtu("gcp")  # the largest MTU a GCP VPC network allows
ROOT_GB = int(os.environ.get("RAVEL_GCP_ROOT_GB", "64"))
LABEL_APP, LABEL_HOST, LABEL_STATE = "ravel-app", "ravel-host", "ravel-state"
SCOPES = ["https://www.googleapis.com/auth/compute"]
RETRIES = 4  # a lost answer (5xx, reset connection) is asked again with the same request_id
ENDPOINT_ENV = "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE"
MIN_RUN_S = 30  # the shortest scheduling.maxRunDuration Compute Engine accepts
_UNKNOWN = object()  # a firewall rule not looked up yet

# urllib3 logs connection retries itself; without a handler Python would print them on the
# user's terminal. ravel reports failures as one line instead.
logging.getLogger("urllib3").addHandler(logging.NullHandler())


class GcpProvider:
    name = "gcp"
    transports = ("ssh",)  # cloud hosts are reached over SSH with their pinned host key
    # Compute Engine's own scheduling.maxRunDuration, set when an instance is made
    lifetime = "run-duration"

    def __init__(self, paths: Paths, credentials: Any = None, project: str | None = None,
                 zone: str | None = None, api_endpoint: str | None = None, poll_interval: float = 1.0) -> None:
        self.paths = paths
        self.tag = paths.tag
        catalogue = load_catalogue("gcp")
        self.nested_types = {t.name for t in catalogue.host_types if t.nested_virt}
        self.zone = zone or os.environ.get("RAVEL_GCP_ZONE") or f"{catalogue.region}-a"
        self._project = project or os.environ.get("RAVEL_GCP_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT")
        self._credentials = credentials
        endpoint = api_endpoint or os.environ.get(ENDPOINT_ENV)
        # gcloud's override is a URL ending in /compute/v1/; the client wants the host part
        self.api_endpoint = re.sub(r"/compute/v1/?$", "", endpoint.rstrip("/")) if endpoint else None
        self.network = os.environ.get("RAVEL_GCP_NETWORK") or resource_name(self.tag, "net")
        self._own_network = not os.environ.get("RAVEL_GCP_NETWORK")
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._network_lock = threading.Lock()
        self._app_locks: dict[str, threading.Lock] = {}
        self._ready_apps: set[str] = set()
        # the app's instances as listed once per run, so each host need not be looked up alone
        self._listed: dict[str, dict[str, Any]] = {}
        self._clients: dict[str, Any] = {}

    # -- SDK plumbing --------------------------------------------------------------------------
    def _auth(self) -> tuple[Any, str]:
        with self._lock:
            if self._credentials is None:
                try:
                    import google.auth
                    from google.auth.exceptions import DefaultCredentialsError
                except ImportError:  # pragma: no cover - a dependency
                    raise EnvironmentProblem("google-cloud-compute is not installed",
                                             hint="pip install google-cloud-compute") from None
                try:
                    self._credentials, found = google.auth.default(scopes=SCOPES)
                except DefaultCredentialsError as exc:
                    raise ProviderError(f"no GCP credentials found: {_first_line(exc)}",
                                        hint="run `gcloud auth application-default login`, or set "
                                             "GOOGLE_APPLICATION_CREDENTIALS to a key file") from None
                self._project = self._project or found
            if not self._project:
                raise ProviderError("no GCP project configured",
                                    hint="set RAVEL_GCP_PROJECT or GOOGLE_CLOUD_PROJECT")
            return self._credentials, self._project

    def _client(self, kind: str) -> Any:
        credentials, _ = self._auth()
        with self._lock:
            if kind not in self._clients:
                from google.cloud import compute_v1

                options = {"api_endpoint": self.api_endpoint} if self.api_endpoint else None
                client = getattr(compute_v1, kind)(credentials=credentials, client_options=options)
                _widen_pool(client)
                self._clients[kind] = client
            return self._clients[kind]

    @property
    def project(self) -> str:
        return self._auth()[1]

    def _wait(self, op: Any, deadline: float, what: str) -> None:
        """Await a long-running operation, bounded by `deadline`. Polled with ravel's own
        operations clients: the ones google-cloud-compute makes for its ExtendedOperation ignore
        client_options and would ask the default endpoint instead of the configured one."""
        from google.cloud import compute_v1

        done_status = compute_v1.Operation.Status.DONE
        zone = (getattr(op, "zone", "") or "").rsplit("/", 1)[-1]
        name = op.name
        ops = self._client("ZoneOperationsClient" if zone else "GlobalOperationsClient")

        def finished() -> Any | None:
            with _gcp(what):
                cur = ops.get(project=self.project, zone=zone, operation=name) if zone else \
                    ops.get(project=self.project, operation=name)
            return cur if cur.status == done_status else None

        current = op if op.status == done_status else poll(finished, deadline, what, first=self.poll_interval,
                                                           ceiling=10.0)
        errors = list(current.error.errors) if current.error else []
        if errors:
            raise ProviderError(f"{what}: {errors[0].code}: {errors[0].message}")
        if current.http_error_status_code and current.http_error_status_code >= 400:
            raise ProviderError(f"{what}: {current.http_error_status_code} {current.http_error_message}")

    def _mutate(self, call: Callable[[str], Any], request_id: str, what: str, deadline: float) -> Any:
        """A mutating call, retried with the same request_id when its answer is lost."""
        from google.api_core import exceptions as gexc

        delay = self.poll_interval
        for attempt in range(RETRIES):
            try:
                with _gcp(what):
                    return call(request_id)
            except ProviderError as exc:
                cause = exc.__cause__ or exc.__context__
                transient = isinstance(cause, (gexc.ServiceUnavailable, gexc.InternalServerError,
                                               gexc.TooManyRequests, gexc.BadGateway, gexc.GatewayTimeout)) \
                    or "connection" in exc.message.lower()
                if not transient or attempt == RETRIES - 1 or remaining(deadline) <= delay:
                    raise
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    # -- preflight -----------------------------------------------------------------------------
    def preflight(self) -> None:
        """Credentials and project resolve, the token is accepted and the zone exists: one call
        before anything is made."""
        from google.api_core import exceptions as gexc

        self._auth()
        try:
            with _gcp("checking the credentials", passthrough=(gexc.NotFound,)):
                self._client("ZonesClient").get(project=self.project, zone=self.zone)
        except gexc.NotFound:
            raise ProviderError(f"GCP zone {self.zone} does not exist in project {self.project}",
                                hint="set RAVEL_GCP_ZONE (e.g. us-central1-a) and RAVEL_GCP_PROJECT") from None

    # -- per-app infrastructure ------------------------------------------------------------------
    def _labels(self, app: str | None = None, host: str | None = None) -> dict[str, str]:
        labels = {LABEL_STATE: self.tag}
        if app:
            labels[LABEL_APP] = app
        if host:
            labels[LABEL_HOST] = host
        return labels

    def _ensure_infra(self, app: str, cidr: str, deadline: float) -> None:
        with self._lock:
            lock = self._app_locks.setdefault(app, threading.Lock())
        with lock:
            if app in self._ready_apps:
                return
            self._ensure_network(deadline)
            tag = resource_name(self.tag, app)
            self._ensure_firewall(f"{tag}-vxlan", app, deadline, allowed=[("udp", ["4789"])], source_tags=[tag])
            self._ensure_firewall(f"{tag}-ssh", app, deadline, allowed=[("tcp", ["22"])], source_ranges=[cidr])
            listed = {i.name: i for i in self._list(self._labels(app))}
            with self._lock:
                self._listed[app] = listed
            self._ready_apps.add(app)

    def _ensure_network(self, deadline: float) -> None:
        from google.api_core import exceptions as gexc
        from google.cloud import compute_v1

        networks = self._client("NetworksClient")
        with self._network_lock:  # one network per state; apps made in parallel share it
            try:
                with _gcp(f"looking up network {self.network}", passthrough=(gexc.NotFound,)):
                    networks.get(project=self.project, network=self.network)
                return
            except gexc.NotFound:
                if not self._own_network:
                    raise ProviderError(f"network {self.network} (RAVEL_GCP_NETWORK) does not exist in "
                                        f"project {self.project}") from None
            body = compute_v1.Network(name=self.network, auto_create_subnetworks=True, mtu=MTU,
                                      description=f"ravel state {self.tag}: hosts' underlay, jumbo frames")
            op = self._mutate(lambda rid: networks.insert(request={"project": self.project, "network_resource": body, "request_id": rid}),
                              str(uuid.uuid4()), f"making network {self.network}", deadline)
            self._wait(op, deadline, f"making network {self.network}")

    def _ensure_firewall(self, name: str, app: str, deadline: float, allowed: list[tuple[str, list[str]]],
                         source_tags: list[str] | None = None, source_ranges: list[str] | None = None,
                         current: Any = _UNKNOWN) -> None:
        """Make or update the rule; `current` is the rule as already listed (None: not there),
        else it is looked up."""
        from google.api_core import exceptions as gexc
        from google.cloud import compute_v1

        firewalls = self._client("FirewallsClient")
        tag = resource_name(self.tag, app)
        body = compute_v1.Firewall(
            name=name, network=f"projects/{self.project}/global/networks/{self.network}", direction="INGRESS",
            allowed=[compute_v1.Allowed(I_p_protocol=proto, ports=ports) for proto, ports in allowed],
            target_tags=[tag], source_tags=source_tags or [], source_ranges=source_ranges or [],
            description=f"ravel app={app} state={self.tag}")
        if current is _UNKNOWN:
            try:
                with _gcp(f"looking up firewall rule {name}", passthrough=(gexc.NotFound,)):
                    current = firewalls.get(project=self.project, firewall=name)
            except gexc.NotFound:
                current = None
        if current is None:
            def insert(rid: str) -> Any:
                try:
                    return firewalls.insert(request={"project": self.project, "firewall_resource": body, "request_id": rid})
                except gexc.Conflict:
                    return None  # made meanwhile (another ravel, or a lost answer): it exists
            op = self._mutate(insert, str(uuid.uuid4()), f"making firewall rule {name}", deadline)
        elif (sorted(current.source_ranges) != sorted(body.source_ranges)
              or sorted(current.source_tags) != sorted(body.source_tags)
              or sorted(current.target_tags) != sorted(body.target_tags)
              or _allowed(current) != _allowed(body)):
            op = self._mutate(lambda rid: firewalls.patch(request={"project": self.project, "firewall": name,
                                                                   "firewall_resource": body, "request_id": rid}),
                              str(uuid.uuid4()), f"updating firewall rule {name}", deadline)
        else:
            return
        if op is not None:
            self._wait(op, deadline, f"making firewall rule {name}")

    # -- exposed services (ServiceExposer) ----------------------------------------------------
    def expose(self, app: str, hosts: Mapping[str, Host], forwards: Sequence[ServiceForward],
               current: Sequence[Exposure]) -> list[Exposure]:
        """One firewall rule per distinct set of sources (`<app tag>-svc-<hash>`), by the app's
        network tag, allowing exactly the exposed ports from the services' `allow`, else from
        where SSH is allowed (the user's address); the host runtime forwards each port on the
        service's host to its guest. A converged app costs one list call and changes nothing."""
        exposed = exposures_for(hosts, forwards)
        by_sources: dict[tuple[str, ...], dict[str, set[int]]] = {}
        for e in exposed:
            by_sources.setdefault(tuple(e.extra["sources"]), {}).setdefault(e.protocol, set()).add(e.host_port)
        want = {self._service_rule(app, sources): (sources, ports) for sources, ports in by_sources.items()}
        deadline = time.monotonic() + remaining(None)
        have = {f.name: f for f in self._service_rules(app)}
        for name, (sources, ports) in sorted(want.items()):
            allowed = [(proto, [str(p) for p in sorted(ps)]) for proto, ps in sorted(ports.items())]
            self._ensure_firewall(name, app, deadline, allowed=allowed, source_ranges=list(sources),
                                  current=have.get(name))
        for name in sorted(set(have) - set(want)):
            self._delete_firewall(name, deadline)
        return exposed

    def unexpose(self, app: str, current: Sequence[Exposure]) -> None:
        deadline = time.monotonic() + remaining(None)
        for f in self._service_rules(app):
            self._delete_firewall(f.name, deadline)

    def _service_rule(self, app: str, sources: tuple[str, ...]) -> str:
        digest = hashlib.sha256(",".join(sources).encode()).hexdigest()[:8]
        return f"{resource_name(self.tag, app)}-svc-{digest}"

    def _service_rules(self, app: str) -> list[Any]:
        prefix = f"{resource_name(self.tag, app)}-svc-"
        return [f for f in self._firewalls(False) if f.name.startswith(prefix)
                and _described(f.description) == (app, self.tag)]

    # -- hosts ---------------------------------------------------------------------------------
    def _instance_name(self, app: str, host: str) -> str:
        return resource_name(self.tag, app, host)

    def _get(self, name: str) -> Any | None:
        from google.api_core import exceptions as gexc

        try:
            with _gcp(f"looking up instance {name}", passthrough=(gexc.NotFound,)):
                return self._client("InstancesClient").get(project=self.project, zone=self.zone, instance=name)
        except gexc.NotFound:
            return None

    def ensure_host(self, spec: HostSpec) -> Host:
        deadline = time.monotonic() + remaining(spec.deadline)
        cidr = ssh_from(spec.ssh_from)
        self._ensure_infra(spec.app, cidr, deadline)
        name = self._instance_name(spec.app, spec.name)
        instances = self._client("InstancesClient")
        with self._lock:
            listed = self._listed.get(spec.app)
            instance = listed.get(name) if listed is not None else None
        if instance is None and listed is None:
            instance = self._get(name)
        if instance is None:
            # from the recorded token: a resumed publish asks with the same request_id
            rid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"ravel:{spec.token}:insert")) if spec.token else str(uuid.uuid4())
            self._insert(spec, name, rid, deadline)
            instance = self._get(name)
            if instance is None:  # the request_id named an older create whose instance is gone since
                self._insert(spec, name, str(uuid.uuid4()), deadline)
                instance = self._get(name)
            if instance is None:
                raise ProviderError(f"{spec.name}: instance {name} was created but then vanished")
        elif instance.status in ("TERMINATED", "STOPPED", "SUSPENDED"):
            op = self._mutate(lambda rid: instances.start(request={"project": self.project, "zone": self.zone,
                                                                   "instance": name, "request_id": rid}),
                              str(uuid.uuid4()), f"starting {spec.name}", deadline)
            self._wait(op, deadline, f"starting {spec.name}")
            instance = None

        def running() -> Any | None:
            got = self._get(name)
            return got if got is not None and got.status == "RUNNING" else None

        if instance is None or instance.status != "RUNNING":
            instance = poll(running, deadline, f"{spec.name}: instance {name} reaching RUNNING",
                            first=self.poll_interval, ceiling=10.0)
        with self._lock:
            if spec.app in self._listed:
                self._listed[spec.app][name] = instance
        nic = instance.network_interfaces[0] if instance.network_interfaces else None
        public = nic.access_configs[0].nat_i_p if nic and nic.access_configs and nic.access_configs[0].nat_i_p else None
        itype = instance.machine_type.rsplit("/", 1)[-1] or spec.type
        return cloud_host(spec.app, spec.name, name, nic.network_i_p if nic else "", public, self.paths, {
            "provider": "gcp", "project": self.project, "zone": self.zone, "instance_type": itype,
            "image": self._image(spec), "network": self.network,
            "hypervisor": "kvm",  # every Compute Engine VM runs on Google's KVM-based hypervisor
            "nested_virt": itype in self.nested_types, "ssh_from": cidr,
        })

    def _image(self, spec: HostSpec) -> str:
        return spec.image or os.environ.get("RAVEL_GCP_IMAGE") or DEBIAN_12

    def _insert(self, spec: HostSpec, name: str, request_id: str, deadline: float) -> None:
        from google.api_core import exceptions as gexc
        from google.cloud import compute_v1

        zone = self.zone
        labels = self._labels(spec.app, spec.name)
        boot = boot_data(self.paths, spec.app, spec.name, MTU)
        body = compute_v1.Instance(
            name=name,
            machine_type=f"zones/{zone}/machineTypes/{spec.type}",
            labels=labels,
            tags=compute_v1.Tags(items=[resource_name(self.tag, spec.app)]),
            disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True, initialize_params=compute_v1.AttachedDiskInitializeParams(
                source_image=self._image(spec), disk_size_gb=ROOT_GB, labels=labels))],
            network_interfaces=[compute_v1.NetworkInterface(
                network=f"projects/{self.project}/global/networks/{self.network}",
                access_configs=[compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")])],
            metadata=compute_v1.Metadata(items=[
                compute_v1.Items(key="startup-script", value=startup_script(boot)),
                compute_v1.Items(key="enable-oslogin", value="FALSE"),  # root logs in with ravel's key
                compute_v1.Items(key="block-project-ssh-keys", value="TRUE"),
            ]),
            description=f"ravel app {spec.app}, {spec.name}",
        )
        if spec.expires is not None:
            # Compute Engine ends the instance itself at the app's expiry: deleted (or stopped,
            # for `action: stop`); 30 s is the shortest run time it takes
            left = max(MIN_RUN_S, int(spec.expires - time.time()))
            body.scheduling = compute_v1.Scheduling(
                max_run_duration=compute_v1.Duration(seconds=left),
                instance_termination_action="STOP" if spec.expiry_action == "stop" else "DELETE")
        if spec.type in self.nested_types:
            body.advanced_machine_features = compute_v1.AdvancedMachineFeatures(enable_nested_virtualization=True)
        instances = self._client("InstancesClient")

        def insert(rid: str) -> Any:
            try:
                return instances.insert(request={"project": self.project, "zone": zone, "instance_resource": body,
                                                 "request_id": rid})
            except gexc.Conflict:
                return None  # it exists: made by the call whose answer was lost, or by another ravel

        op = self._mutate(insert, request_id, f"starting {spec.name} ({spec.type})", deadline)
        if op is not None:
            self._wait(op, deadline, f"starting {spec.name} ({spec.type})")

    def transport(self, host: Host) -> Any:
        return ssh_transport(host)

    def _list(self, labels: dict[str, str], any_state: bool = False) -> list[Any]:
        wanted = dict(labels)
        if any_state:
            wanted.pop(LABEL_STATE, None)
        expression = " AND ".join(f'labels.{k} = "{v}"' for k, v in sorted(wanted.items()))
        with _gcp("listing instances"):
            found = list(self._client("InstancesClient").list(request={
                "project": self.project, "zone": self.zone, **({"filter": expression} if expression else {})}))
        return [i for i in found if all(i.labels.get(k) == v for k, v in wanted.items())
                and (LABEL_APP in i.labels)]

    def _delete_instance(self, name: str, deadline: float) -> None:
        from google.api_core import exceptions as gexc

        instances = self._client("InstancesClient")

        def delete(rid: str) -> Any:
            try:
                return instances.delete(request={"project": self.project, "zone": self.zone, "instance": name,
                                                 "request_id": rid})
            except gexc.NotFound:
                return None

        op = self._mutate(delete, str(uuid.uuid4()), f"deleting instance {name}", deadline)
        if op is not None:
            self._wait(op, deadline, f"deleting instance {name}")

    def delete_host(self, app: str, name: str, host_id: int) -> None:
        deadline = time.monotonic() + remaining(None)
        with self._lock:
            self._listed.get(app, {}).pop(self._instance_name(app, name), None)
        self._delete_instance(self._instance_name(app, name), deadline)
        self._release_if_unused(app, deadline)

    def _release_if_unused(self, app: str, deadline: float) -> None:
        """The app's firewall rules go with its last instance (each delete waits for its own
        instance first, so the last host to finish sees none left)."""
        if self._list(self._labels(app)):
            return
        tag = resource_name(self.tag, app)
        for rule in [f"{tag}-vxlan", f"{tag}-ssh"] + [f.name for f in self._service_rules(app)]:
            self._delete_firewall(rule, deadline)
        with self._lock:
            self._ready_apps.discard(app)
            self._listed.pop(app, None)

    def _delete_firewall(self, name: str, deadline: float) -> None:
        from google.api_core import exceptions as gexc

        firewalls = self._client("FirewallsClient")

        def delete(rid: str) -> Any:
            try:
                return firewalls.delete(request={"project": self.project, "firewall": name, "request_id": rid})
            except gexc.NotFound:
                return None

        op = self._mutate(delete, str(uuid.uuid4()), f"deleting firewall rule {name}", deadline)
        if op is not None:
            self._wait(op, deadline, f"deleting firewall rule {name}")

    def leftover_hosts(self, app: str) -> list[str]:
        return sorted({i.labels[LABEL_HOST] for i in self._list(self._labels(app)) if LABEL_HOST in i.labels})

    def _firewalls(self, any_state: bool) -> list[Any]:
        prefix = "ravel-" if any_state else f"{resource_name(self.tag, '')}"
        with _gcp("listing firewall rules"):
            found = list(self._client("FirewallsClient").list(request={"project": self.project,
                                                                        "filter": f'name eq "{prefix}.*"'}))
        return [f for f in found if f.name.startswith(prefix) and _described(f.description)]

    def cleanup(self) -> None:
        """The network ravel made goes once no instance or firewall rule of this state uses it."""
        from google.api_core import exceptions as gexc

        if not self._own_network or self._list(self._labels()) or self._firewalls(False):
            return
        networks = self._client("NetworksClient")
        deadline = time.monotonic() + remaining(None)

        def delete(rid: str) -> Any:
            try:
                return networks.delete(request={"project": self.project, "network": self.network, "request_id": rid})
            except gexc.NotFound:
                return None

        op = self._mutate(delete, str(uuid.uuid4()), f"deleting network {self.network}", deadline)
        if op is not None:
            self._wait(op, deadline, f"deleting network {self.network}")

    # -- ravel gc ----------------------------------------------------------------------------------
    def _orphans(self, known_apps: set[str], any_state: bool) -> tuple[list[Any], list[Any]]:
        def lost(app: str | None, state: str | None) -> bool:
            return app not in known_apps or (any_state and state != self.tag)

        instances = [i for i in self._list(self._labels(), any_state)
                     if lost(i.labels.get(LABEL_APP), i.labels.get(LABEL_STATE))]
        rules = [f for f in self._firewalls(any_state)
                 if lost(*(_described(f.description) or (None, None)))]
        return instances, rules

    def garbage(self, known_apps: set[str], any_state: bool = False) -> list[str]:
        instances, rules = self._orphans(known_apps, any_state)
        return ([f"instance {i.name} (app {i.labels.get(LABEL_APP)}, {i.labels.get(LABEL_HOST, '?')}, {i.status})"
                 for i in instances] + [f"firewall rule {f.name}" for f in rules])

    def collect(self, known_apps: set[str], any_state: bool = False) -> list[str]:
        instances, rules = self._orphans(known_apps, any_state)
        removed = ([f"instance {i.name} (app {i.labels.get(LABEL_APP)}, {i.labels.get(LABEL_HOST, '?')}, {i.status})"
                    for i in instances] + [f"firewall rule {f.name}" for f in rules])
        deadline = time.monotonic() + remaining(None)
        for i in instances:
            self._delete_instance(i.name, deadline)
        for f in rules:
            self._delete_firewall(f.name, deadline)
        self.cleanup()
        return removed


def _widen_pool(client: Any) -> None:
    """Every host of a lab is asked for at once: let the client's HTTP session keep as many
    connections (requests keeps 10 and, past that, opens and drops one per call)."""
    session = getattr(getattr(client, "_transport", None), "_session", None)
    if session is None:  # a client library that keeps its session elsewhere: the default is fine
        return
    from requests.adapters import HTTPAdapter

    for prefix in ("https://", "http://"):
        session.mount(prefix, HTTPAdapter(pool_connections=4, pool_maxsize=64))


def _allowed(rule: Any) -> list[tuple[str, tuple[str, ...]]]:
    return sorted((a.I_p_protocol, tuple(sorted(a.ports))) for a in rule.allowed)


def _described(description: str) -> tuple[str, str] | None:
    """(app, state) from a firewall rule's description ("ravel app=A state=S"): rules have no labels."""
    m = re.fullmatch(r"ravel app=(\S+) state=(\S+)", description or "")
    return (m.group(1), m.group(2)) if m else None


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(text).strip().splitlines()[0]


@contextlib.contextmanager
def _gcp(what: str, passthrough: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """google-api-core's and google-auth's exceptions -> one ProviderError line."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as aexc

    try:
        yield
    except passthrough:
        raise
    except ProviderError:
        raise
    except aexc.RefreshError as exc:
        raise ProviderError(f"GCP rejected the credentials while {what}: {_first_line(exc)}",
                            hint="run `gcloud auth application-default login`, or check GOOGLE_APPLICATION_CREDENTIALS") from exc
    except aexc.DefaultCredentialsError as exc:
        raise ProviderError(f"no GCP credentials found: {_first_line(exc)}",
                            hint="run `gcloud auth application-default login`") from exc
    except aexc.TransportError as exc:
        raise ProviderError(f"cannot reach GCP's token service while {what}: {_first_line(exc)}") from exc
    except (gexc.Unauthenticated, gexc.Unauthorized) as exc:
        raise ProviderError(f"GCP rejected the credentials while {what}: {_first_line(exc)}",
                            hint="run `gcloud auth application-default login`") from exc
    except gexc.Forbidden as exc:
        raise ProviderError(f"GCP denied {what}: {_first_line(exc)}",
                            hint="the credentials work but lack a permission ravel needs (Compute Admin)") from exc
    except gexc.GoogleAPICallError as exc:
        raise ProviderError(f"GCP refused {what}: {_first_line(exc)}") from exc
    except gexc.RetryError as exc:
        raise ProviderError(f"GCP did not answer while {what}: {_first_line(exc)}") from exc
    except OSError as exc:  # requests' ConnectionError is an OSError
        raise ProviderError(f"cannot reach GCP while {what} (connection failed: {_first_line(exc)})") from exc
