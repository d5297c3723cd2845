"""`ravel gc`: what a cloud provider holds for apps this state no longer knows (a lost
RAVEL_HOME, a publish killed before its state was written, resources made by hand with ravel's
tags), listed and removed."""

from __future__ import annotations

from ..errors import ProviderError
from ..paths import Paths
from ..providers import get_provider
from ..providers.base import GarbageCollector
from .sessions import open_state


def _collector(paths: Paths, provider_name: str) -> GarbageCollector:
    provider = get_provider(provider_name, paths)
    if not isinstance(provider, GarbageCollector):
        raise ProviderError(f"provider {provider_name} keeps nothing outside this machine to collect",
                            hint="`ravel gc` is for the aws and gcp providers; `ravel destroy APP` cleans local apps")
    provider.preflight()
    return provider


def _known(paths: Paths, provider_name: str) -> set[str]:
    state = open_state(paths)
    try:
        return {a.name for a in state.apps() if a.provider == provider_name}
    finally:
        state.close()


def garbage(paths: Paths, provider_name: str, any_state: bool = False) -> list[str]:
    collector = _collector(paths, provider_name)
    return collector.garbage(_known(paths, provider_name), any_state)


def collect(paths: Paths, provider_name: str, any_state: bool = False) -> list[str]:
    collector = _collector(paths, provider_name)
    return collector.collect(_known(paths, provider_name), any_state)
