"""`ravel gc`: what a cloud provider holds for apps this state no longer knows (a lost
RAVEL_HOME, a publish killed before its state was written, resources made by hand with ravel's
tags), listed and removed; and apps whose hosts ended themselves at the app's expiry
(run/lifetime.py): what they left (security groups, key pairs, firewall rules, and any instance
still shutting down) is removed the same way, and the app is forgotten."""

from __future__ import annotations

from ..errors import ProviderError
from ..paths import Paths
from ..providers import get_provider
from ..providers.base import GarbageCollector
from .lifetime import expired_destroyed
from .sessions import Context, open_state
from .teardown import forget_app


def _collector(paths: Paths, provider_name: str) -> GarbageCollector:
    provider = get_provider(provider_name, paths)
    if not isinstance(provider, GarbageCollector):
        raise ProviderError(f"provider {provider_name} keeps nothing outside this machine to collect",
                            hint="`ravel gc` is for the aws and gcp providers; `ravel destroy APP` cleans local apps")
    provider.preflight()
    return provider


def _known(paths: Paths, provider_name: str) -> tuple[set[str], set[str]]:
    """The apps the state knows that are alive, and those that expired (hosts gone themselves)."""
    state = open_state(paths)
    try:
        expired = expired_destroyed(state, provider_name)
        return {a.name for a in state.apps() if a.provider == provider_name} - expired, expired
    finally:
        state.close()


def garbage(paths: Paths, provider_name: str, any_state: bool = False) -> list[str]:
    collector = _collector(paths, provider_name)
    known, expired = _known(paths, provider_name)
    return collector.garbage(known, any_state) + [f"app {a} (expired): forgotten by this state" for a in sorted(expired)]


def collect(paths: Paths, provider_name: str, any_state: bool = False) -> list[str]:
    collector = _collector(paths, provider_name)
    known, expired = _known(paths, provider_name)
    removed = collector.collect(known, any_state)
    ctx = Context(paths)
    try:
        for app in sorted(expired):
            forget_app(ctx, app)
            removed.append(f"app {app} (expired): forgotten by this state")
    finally:
        ctx.close()
    return removed
