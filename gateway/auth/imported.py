"""The digests of imported keys, in memory (docs/reference.md#imported-keys).

An imported token has no format to check and no key id to look up: only the
digest of the whole token finds it. So that a random string is still refused
without a store query, each process holds every imported key's digest, as
the store gives it (32 bytes): about 110 MB for a million, and a membership
test is one hash of the presented digest, with no conversion on either side
(the refusal of a flood of random tokens runs through here). The set only
grows while the process runs: a deleted key's digest costs one store query
if presented again (then the negative cache answers), never a wrong answer.

Filled from the store at start (``KeyMemory.load_imported``) and kept current
by the change feed: each imported batch is one ``keys-imported`` notice.
"""

from __future__ import annotations

from collections.abc import Iterable


class ImportedDigests:
    __slots__ = ("_digests",)

    def __init__(self) -> None:
        self._digests: set[bytes] = set()

    def update(self, digests: Iterable[bytes]) -> None:
        self._digests.update(digests)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._digests

    def __len__(self) -> int:
        return len(self._digests)
