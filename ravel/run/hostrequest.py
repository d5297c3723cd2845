"""How a host was asked for, as its state record keeps it: read by the provisioning that
resumes it and, cheaply, by anything that only needs to know how the host is reached (`ravel
proxy`, run by ssh for every connection, loads this and not the provisioning)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class HostRequest:
    """How a host was asked for, kept in its state record ("provision") before the provider is
    asked: a resumed publish sends the same token (ClientToken / request_id), so the cloud
    recognises a create it already did, and a re-publish keeps the image, --ssh-from and
    transport the host was made with."""

    token: str
    image: str | None = None
    ssh_from: str | None = None
    transport: str | None = None

    @classmethod
    def recorded(cls, extra: Mapping[str, Any]) -> HostRequest | None:
        doc = extra.get("provision")
        if not isinstance(doc, dict) or not doc.get("token"):
            return None
        return cls(str(doc["token"]), doc.get("image"), doc.get("ssh_from"), doc.get("transport"))

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def recorded_transport(extra: Mapping[str, Any]) -> str | None:
    req = HostRequest.recorded(extra)
    return req.transport if req else None
