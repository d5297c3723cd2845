"""Work done on every host of an app at once, bounded."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, TypeVar

T = TypeVar("T")
MAX_PARALLEL_HOSTS = 16


def parallel(fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
    items = list(items)
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_HOSTS, len(items))) as pool:
        return list(pool.map(fn, items))
