"""Providers by name, imported lazily so `ravel plan` never pays for boto3 or google-cloud."""

from __future__ import annotations

import importlib

from ..errors import ProviderError
from ..paths import Paths
from .base import Provider

_REGISTRY = {
    "local": ("ravel.providers.local", "LocalProvider"),
    "aws": ("ravel.providers.aws", "AwsProvider"),
    "gcp": ("ravel.providers.gcp", "GcpProvider"),
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def get_provider(name: str, paths: Paths) -> Provider:
    try:
        module, cls = _REGISTRY[name]
    except KeyError:
        raise ProviderError(f"unknown provider {name!r}; available: {', '.join(names())}") from None
    return getattr(importlib.import_module(module), cls)(paths)
