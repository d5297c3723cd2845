"""Moving bytes from a source to sinks while hashing them: one pass gives the copy and its
sha256, so no transfer needs a second read of what it wrote."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

BLOCK = 1 << 20  # one read of a local file: big enough that the per-call cost vanishes


@dataclass(frozen=True)
class Digest:
    sha256: str
    size: int


@dataclass(frozen=True)
class Blocks:
    """A file being read: its bytes in blocks, and what it says of itself."""

    blocks: Iterator[bytes]
    size: int
    mode: int  # permission bits

    def __iter__(self) -> Iterator[bytes]:
        return self.blocks


def pump(blocks: Iterable[bytes], *sinks: BinaryIO) -> Digest:
    """Write every block to every sink; the sha256 and size of all of them."""
    h = hashlib.sha256()
    size = 0
    for block in blocks:
        h.update(block)
        size += len(block)
        for sink in sinks:
            sink.write(block)
    return Digest(h.hexdigest(), size)


def digest_file(path: str) -> Digest:
    with open(path, "rb") as fh:
        return pump(iter(lambda: fh.read(BLOCK), b""))
