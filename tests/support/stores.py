"""A store that counts: "no store query" asserted on the store itself.

:class:`CountingStore` is the real :class:`SQLiteStore`, counting the calls
the tests care about before doing the real work, so assertions about store
queries do not rest on the verifier's own bookkeeping. The
``counting_keygate_factory`` fixture (tests/gateway/conftest.py) runs an app on one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from keygate.config.loader import sqlite_path
from keygate.gateway.store.records import AuthRecord, Change, KeyAuth
from keygate.gateway.store.sqlite.store import SQLiteStore
from tests.support.gateway import Keygate
from tests.support.polling import wait_for


class CountingStore(SQLiteStore):
    """The real SQLite store, counting the calls the tests care about."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.auth_lookups = 0  # verification queries: by digest or by key id
        self.touch_batches: list[dict[str, float]] = []
        self.changes_reads = 0
        self.version_probes = 0

    async def auth_lookup(self, digest: bytes) -> AuthRecord | None:
        self.auth_lookups += 1
        return await super().auth_lookup(digest)

    async def auth_lookup_key(self, key_id: str, digest: bytes) -> KeyAuth:
        # The same verification query, by key id: counted with auth_lookup.
        self.auth_lookups += 1
        return await super().auth_lookup_key(key_id, digest)

    async def touch_last_used(
        self, stamps: Mapping[str, float], resolution: float = 0.0
    ) -> None:
        self.touch_batches.append(dict(stamps))
        await super().touch_last_used(stamps, resolution)

    async def changes_since(self, seq: int) -> list[Change]:
        self.changes_reads += 1
        return await super().changes_since(seq)

    async def data_version(self) -> int:
        self.version_probes += 1
        return await super().data_version()

    def data_version_now(self) -> int | None:
        version = super().data_version_now()
        if version is not None:
            self.version_probes += 1
        return version


async def settle(st: CountingStore) -> None:
    """Wait until the app's change watcher has applied every notice written so far.

    The watcher also sees this process's own notices and evicts again: a test
    that counts lookups must not warm the cache before that echo has passed.
    Two more probes mean the probe that saw the change has finished its poll.
    """
    probes = st.version_probes
    await wait_for(
        lambda: st.version_probes >= probes + 2, within=2.0, what="the change feed to settle"
    )


def store_path(kg: Keygate) -> str:
    return sqlite_path(kg.settings.store.url)


# The counting_keygate_factory fixture: factory(routes, **auth) -> (Keygate, CountingStore).
CountingFactory = Callable[..., Awaitable[tuple[Keygate, CountingStore]]]
