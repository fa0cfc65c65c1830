"""An in-memory answer to "does this key id exist?", so forged tokens cost no store query.

A flood of well-formed tokens with random key ids (anyone can compute CRC32)
would otherwise cost one store lookup per request: the negative cache is keyed
by digest, and every forged token has a new one. Key ids are 12 base36
characters, so each fits one int: a set of a million of them takes about 70 MB
and answers in well under a microsecond, exactly (a Bloom filter was slower in
Python and not smaller enough to matter).

The set is filled from the store at start and kept current by change notices.
A miss can also mean "created a moment ago by another process and not yet
announced": the verifier then polls the change feed once (coalesced across
concurrent misses) before it refuses.
"""

from __future__ import annotations

from collections.abc import Iterable


def _as_int(key_id: str) -> int:
    return int(key_id, 36)


class KeyIdSet:
    __slots__ = ("_ids",)

    def __init__(self, key_ids: Iterable[str] = ()) -> None:
        self._ids: set[int] = {_as_int(k) for k in key_ids}

    def add(self, key_id: str) -> None:
        self._ids.add(_as_int(key_id))

    def update(self, key_ids: Iterable[str]) -> None:
        self._ids.update(_as_int(k) for k in key_ids)

    def discard(self, key_id: str) -> None:
        self._ids.discard(_as_int(key_id))

    def __contains__(self, key_id: str) -> bool:
        return _as_int(key_id) in self._ids

    def __len__(self) -> int:
        return len(self._ids)
