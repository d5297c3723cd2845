"""GCP lifetimes through the real google-cloud-compute client against the HTTP fake: the exact
scheduling an instance is created with (Compute Engine then ends it with no ravel process)."""

from __future__ import annotations

import time

import pytest

from ravel.errors import ProviderError
from ravel.run.lifetime import extend
from ravel.run.sessions import Context
from tests.unit.test_gcp_requests import bodies, env, fake, only_loopback, provider, spec  # noqa: F401 (fixtures)


def test_an_expiring_app_sends_max_run_duration_and_delete(fake, env):  # noqa: F811
    gcp = provider(env)
    expires = time.time() + 7200
    gcp.ensure_host(spec("host-1", expires=expires))
    gcp.ensure_host(spec("host-2", expires=expires, expiry_action="stop"))
    gcp.ensure_host(spec("host-3"))
    inserts = {b["labels"]["ravel-host"]: b for b in bodies(fake, "POST", r"/zones/[^/]+/instances$")}
    one = inserts["host-1"]["scheduling"]
    assert one["instanceTerminationAction"] == "DELETE"
    assert set(one) == {"maxRunDuration", "instanceTerminationAction"}
    assert 7190 <= int(one["maxRunDuration"]["seconds"]) <= 7200  # what is left of the app's lifetime
    assert inserts["host-2"]["scheduling"]["instanceTerminationAction"] == "STOP"
    assert "scheduling" not in inserts["host-3"]  # no lifetime, nothing sent


def test_a_host_made_late_gets_what_is_left_and_never_less_than_gce_takes(fake, env):  # noqa: F811
    gcp = provider(env)
    gcp.ensure_host(spec("host-1", expires=time.time() + 5))
    [body] = bodies(fake, "POST", r"/zones/[^/]+/instances$")
    assert body["scheduling"]["maxRunDuration"] == {"seconds": "30"}  # Compute Engine's shortest


def test_extend_on_gcp_says_the_cloud_keeps_its_own_limit(env):  # noqa: F811
    ctx = Context(env)
    try:
        ctx.state.put_app("lab", "gcp", "running")
        ctx.state.set_lifetime("lab", time.time() + 60, "destroy", "--ttl")
        with pytest.raises(ProviderError) as exc:
            extend(ctx, "lab", provider(env), 3600, [])
        assert "only on a stopped instance" in exc.value.message
        assert ctx.state.lifetime("lab").expires < time.time() + 61  # unchanged: nothing claimed
    finally:
        ctx.close()
