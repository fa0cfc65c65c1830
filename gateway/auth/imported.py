"""The digests of imported keys, in memory (docs/reference.md#imported-keys).

An imported token has no format to check and no key id to look up: only the
digest of the whole token finds it. So that a random string is still refused
without a store query, each process holds every imported key's digest. It
keeps the first 8 bytes of each, as an int: a million of them take about
70 MB, and a random token matches one by chance with odds of 1 in 2**64 / N
(then the store is asked, and says no). The set only grows while the process
runs: a deleted key's digest costs one store query if presented again, never
a wrong answer.

Filled from the store at start (``KeyMemory.load_imported``) and kept current
by the change feed: each imported batch is one ``keys-imported`` notice.
"""

from __future__ import annotations

from collections.abc import Iterable


def _head(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big")


class ImportedDigests:
    __slots__ = ("_heads",)

    def __init__(self) -> None:
        self._heads: set[int] = set()

    def update(self, digests: Iterable[bytes]) -> None:
        self._heads.update(_head(d) for d in digests)

    def __contains__(self, digest: bytes) -> bool:
        return _head(digest) in self._heads

    def __len__(self) -> int:
        return len(self._heads)
