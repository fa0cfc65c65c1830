"""Refusals from memory (issue 5): forged key ids and wrong secrets cost no store query.

Every app-level test runs on both stores (SQLite files, and the PostgreSQL
server at 127.0.0.1:5432 when one answers). Store queries are counted by the
verifier (``Verifier.lookups``: by digest or by key id) and, on SQLite, by the
real store itself (``CountingStore``). The catch-up window is driven by a
fake clock on the verifier, so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from keygate.config.settings import AuthSettings
from keygate.gateway.auth import keyformat
from keygate.gateway.auth.cache import KeyCache
from keygate.gateway.auth.keyids import KeyIdSet
from keygate.gateway.auth.usage import UsageRecorder
from keygate.gateway.auth.verify import Verifier
from keygate.gateway.errors import Unauthorized
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.store import open_store
from keygate.gateway.store.base import Store
from tests.support.gateway import GatewayFactory, Keygate, default_route, key_id
from tests.support.polling import wait_for
from tests.support.stores import CountingFactory, settle
from tests.support.upstreams import Recorder


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Overrides the suite's store: every app here runs on both stores."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path}/keygate.db"


class FakeClock:
    """The verifier's monotonic clock, moved only by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class VerifierRig:
    """A running app, its verifier on a fake clock, and counters of what it asked."""

    def __init__(self, kg: Keygate) -> None:
        self.kg = kg
        self.verifier: Verifier = kg.gw.verifier
        self.clock = FakeClock()
        self.verifier.clock = self.clock
        self.catch_ups = 0
        inner = self.verifier.catch_up
        assert inner is not None

        async def counted() -> None:
            self.catch_ups += 1
            await inner()

        self.verifier.catch_up = counted
        # Every notice the cache is given, by a service directly or by the feed.
        self.applied: list[tuple[str, str]] = []
        cache = kg.gw.cache
        apply = cache.apply

        def recorded(kind: str, ref: str) -> None:
            self.applied.append((kind, ref))
            apply(kind, ref)

        cache.apply = recorded
        self._markers = 0

    async def settle(self) -> None:
        """Wait until the change feed has applied every notice written so far.

        The feed also brings back this process's own notices and evicts again
        (bumping the cache generation, which discards an in-flight fill): a
        test that counts lookups waits for those echoes first. A marker write
        goes last; the feed applies in order, so once the marker has come back
        everything before it has.
        """
        # Twice: on PostgreSQL the listener and the poll loop can read the same
        # notices at once and apply them twice; a poll that read before the
        # first marker came back has finished before the second does.
        for _ in range(2):
            self._markers += 1
            name = f"settle-{self._markers}"
            await self.kg.services.groups.create(await self.admin(), {"name": name, "rules": []})
            marker = ("group", name)
            await wait_for(
                lambda marker=marker: self.applied.count(marker) >= 2,
                within=2.0,
                what="the change feed",
            )

    @property
    def lookups(self) -> int:
        return self.verifier.lookups

    def past_window(self) -> None:
        """Later than any catch-up so far can cover."""
        self.clock.advance(self.verifier.catch_up_window * 2)

    async def call(self, token: str) -> tuple[int, str | None]:
        resp = await self.kg.client.get("/x", headers={"X-API-Key": token})
        if resp.status == 200:
            await resp.read()
            return 200, None
        return resp.status, (await resp.json())["error"]["code"]

    def sync_check(self, token: str) -> str:
        """The hot path from memory: "refused", "deferred" (ask the store) or "valid"."""
        try:
            _, principal = self.verifier.cached(token)
        except Unauthorized as exc:
            assert exc.code == "invalid_api_key"
            return "refused"
        return "deferred" if principal is None else "valid"

    async def load(self, token: str) -> str:
        try:
            await self.verifier.load(keyformat.digest(token), token)
        except Unauthorized as exc:
            return exc.code
        return "valid"

    async def key(self) -> str:
        """A new key's token, once the feed has brought its notice back."""
        token = await self.kg.make_key(["default"])
        await self.settle()
        return token

    async def admin(self) -> Actor:
        return await self.kg.admin_actor()




def wrong_secret(token: str) -> str:
    """A well-formed token for the same key id with a fresh random secret."""
    return keyformat.generate("kg", key_id(token))[0]


def forged() -> str:
    return keyformat.generate("kg")[0]  # valid checksum, random key id


@pytest.fixture
async def rig(keygate_factory: GatewayFactory, upstream: Recorder) -> VerifierRig:
    r = VerifierRig(await keygate_factory(default_route(upstream.url)))
    await r.settle()
    return r


@pytest.fixture
async def other_process(rig: VerifierRig) -> AsyncIterator[tuple[Services, Actor]]:
    """Services on a second store connection, as the CLI or another worker writes."""
    other = open_store(rig.kg.settings.store.url)
    await other.open()
    user = await other.get_user("admin")
    assert user is not None
    yield (
        Services.build(ServiceContext(other, rig.kg.settings.auth)),
        Actor(user.id, user.username, None, ("admin",), "cli"),
    )
    await other.close()


# --- a real key id, wrong secrets ----------------------------------------------------
async def test_memory_wrong_secret_flood_costs_one_query_per_key_id(rig: VerifierRig) -> None:
    token = await rig.key()
    assert await rig.call(wrong_secret(token)) == (401, "invalid_api_key")
    assert rig.lookups == 1  # the first one learns the key's digests
    for _ in range(50):
        assert await rig.call(wrong_secret(token)) == (401, "invalid_api_key")
    assert rig.lookups == 1
    assert await rig.call(token) == (200, None)
    assert rig.lookups == 2


async def test_memory_wrong_secret_after_a_valid_use_costs_no_query(rig: VerifierRig) -> None:
    token = await rig.key()
    assert await rig.call(token) == (200, None)
    assert rig.lookups == 1  # the valid lookup brought the digests along
    for _ in range(20):
        assert await rig.call(wrong_secret(token)) == (401, "invalid_api_key")
    assert rig.lookups == 1


async def test_memory_wrong_secret_counted_on_the_store_itself(
    counting_keygate_factory: CountingFactory, upstream: Recorder
) -> None:
    kg, st = await counting_keygate_factory(default_route(upstream.url))
    token = await kg.make_key(["default"])
    await settle(st)
    r = VerifierRig(kg)
    assert await r.call(wrong_secret(token)) == (401, "invalid_api_key")
    assert st.auth_lookups == 1
    # Within one catch-up window the refusals are synchronous: not even the
    # change feed is asked.
    assert await r.load(wrong_secret(token)) == "invalid_api_key"
    probes, reads, catch_ups = st.version_probes, st.changes_reads, r.catch_ups
    for _ in range(100):
        assert r.sync_check(wrong_secret(token)) == "refused"
    assert (st.auth_lookups, r.catch_ups) == (1, catch_ups)
    assert st.changes_reads == reads
    # The app's own poll loop may probe meanwhile; the refusals added nothing.
    assert st.version_probes - probes <= 2
    assert await r.call(token) == (200, None)
    assert st.auth_lookups == 2


async def test_memory_wrong_secret_sync_refusal_needs_a_recent_catch_up(rig: VerifierRig) -> None:
    token = await rig.key()
    assert await rig.call(token) == (200, None)
    # Digests known, but no catch-up covers "now": defer to load.
    rig.past_window()
    assert rig.sync_check(wrong_secret(token)) == "deferred"
    catch_ups = rig.catch_ups
    assert await rig.load(wrong_secret(token)) == "invalid_api_key"
    assert rig.catch_ups == catch_ups + 1
    assert rig.lookups == 1
    # That catch-up covers the window that follows it, and only that window.
    assert rig.sync_check(wrong_secret(token)) == "refused"
    rig.clock.advance(rig.verifier.catch_up_window)
    assert rig.sync_check(wrong_secret(token)) == "refused"
    rig.clock.advance(rig.verifier.catch_up_window / 100)
    assert rig.sync_check(wrong_secret(token)) == "deferred"
    assert rig.catch_ups == catch_ups + 1
    assert rig.lookups == 1


async def test_memory_the_right_token_is_never_refused_from_memory(rig: VerifierRig) -> None:
    token = await rig.key()
    assert await rig.call(wrong_secret(token)) == (401, "invalid_api_key")
    assert await rig.load(forged()) == "invalid_api_key"  # a fresh catch-up
    rig.kg.gw.cache.evict_key(key_id(token))
    assert rig.sync_check(token) == "deferred"  # digests forgotten: ask the store
    assert await rig.call(token) == (200, None)
    assert rig.sync_check(token) == "valid"


# --- forged key ids --------------------------------------------------------------------
async def test_memory_forged_ids_refused_synchronously_within_the_window(rig: VerifierRig) -> None:
    first = forged()
    assert rig.sync_check(first) == "deferred"  # never caught up yet
    assert await rig.load(first) == "invalid_api_key"
    assert rig.catch_ups == 1
    for _ in range(50):
        assert rig.sync_check(forged()) == "refused"
    rig.clock.advance(rig.verifier.catch_up_window)
    assert rig.sync_check(forged()) == "refused"
    rig.clock.advance(rig.verifier.catch_up_window / 100)
    late = forged()
    assert rig.sync_check(late) == "deferred"
    assert await rig.load(late) == "invalid_api_key"
    assert rig.catch_ups == 2
    assert rig.sync_check(forged()) == "refused"
    assert rig.lookups == 0


async def test_memory_failed_catch_up_covers_nothing(rig: VerifierRig) -> None:
    async def down() -> None:
        raise OSError("change feed down")

    rig.verifier.catch_up = down
    with pytest.raises(OSError):
        await rig.load(forged())
    assert rig.sync_check(forged()) == "deferred"


# --- changes made elsewhere ---------------------------------------------------------------
async def test_memory_key_created_elsewhere_after_start_is_never_refused(
    rig: VerifierRig, other_process: tuple[Services, Actor]
) -> None:
    assert await rig.load(forged()) == "invalid_api_key"
    assert rig.sync_check(forged()) == "refused"  # covered right now
    services, cli = other_process
    rig.past_window()  # the request arrives after the last catch-up's window
    issued = await services.keys.create(cli, {"groups": ["default"]})
    assert rig.sync_check(issued.token) == "deferred"
    # What load does next (catch up, then ask the store) is
    # test_verify_key_created_by_another_connection_works_at_once; here the
    # notice is awaited so that the answer does not depend on the poll loop.
    key_ids = rig.verifier.key_ids
    assert key_ids is not None
    await wait_for(lambda: issued.key.id in key_ids, within=2.0, what="the key-created notice")
    assert rig.sync_check(issued.token) == "deferred"
    assert await rig.load(issued.token) == "valid"
    assert await rig.call(issued.token) == (200, None)


async def test_memory_key_rolled_elsewhere_new_token_works_at_once(
    rig: VerifierRig, other_process: tuple[Services, Actor]
) -> None:
    token = await rig.key()
    assert await rig.call(token) == (200, None)
    assert await rig.load(wrong_secret(token)) == "invalid_api_key"
    services, cli = other_process
    rig.past_window()
    issued = await services.keys.roll(cli, key_id(token), {"grace_seconds": 3600})
    # Whether or not the poll loop has applied the notice yet, memory defers.
    assert rig.sync_check(issued.token) == "deferred"
    assert await rig.load(issued.token) == "valid"
    assert await rig.call(issued.token) == (200, None)
    assert await rig.call(token) == (200, None)  # in its grace period


async def test_memory_notice_from_elsewhere_evicts_digests_of_a_rolled_key(
    rig: VerifierRig, other_process: tuple[Services, Actor]
) -> None:
    token = await rig.key()
    assert await rig.call(token) == (200, None)
    cache = rig.kg.gw.cache
    assert set(cache.key_digests(key_id(token)) or ()) == {keyformat.digest(token)}
    services, cli = other_process
    issued = await services.keys.roll(cli, key_id(token), {"grace_seconds": 0})
    rig.past_window()
    assert rig.sync_check(issued.token) == "deferred"
    # Applied by a catch-up or by the poll loop, whichever comes first.
    assert await rig.load(forged()) == "invalid_api_key"
    await wait_for(
        lambda: cache.key_digests(key_id(token)) is None, within=2.0, what="the roll notice"
    )
    assert rig.sync_check(issued.token) == "deferred"
    assert await rig.call(issued.token) == (200, None)
    assert await rig.call(token) == (401, "invalid_api_key")
    assert set(cache.key_digests(key_id(token)) or ()) == {keyformat.digest(issued.token)}


async def test_memory_roll_with_grace_old_and_new_work_then_old_refused(rig: VerifierRig) -> None:
    token = await rig.key()
    assert await rig.call(token) == (200, None)
    issued = await rig.kg.services.keys.roll(
        await rig.admin(), key_id(token), {"grace_seconds": 1}
    )
    await rig.settle()
    assert await rig.call(issued.token) == (200, None)
    assert await rig.call(token) == (200, None)
    both = {keyformat.digest(token), keyformat.digest(issued.token)}
    assert set(rig.kg.gw.cache.key_digests(key_id(token)) or ()) == both
    lookups = rig.lookups
    for _ in range(10):
        assert await rig.call(wrong_secret(token)) == (401, "invalid_api_key")
    assert rig.lookups == lookups

    async def old_refused() -> bool:
        status = await rig.call(token)
        assert status in ((200, None), (401, "invalid_api_key"))
        return status == (401, "invalid_api_key")

    await wait_for(old_refused, within=3.0, what="the end of the grace period")
    assert await rig.call(issued.token) == (200, None)


async def test_memory_roll_without_grace_old_token_refused_at_once(rig: VerifierRig) -> None:
    token = await rig.key()
    assert await rig.call(token) == (200, None)
    issued = await rig.kg.services.keys.roll(await rig.admin(), key_id(token), {})
    await rig.settle()
    assert await rig.call(token) == (401, "invalid_api_key")
    assert await rig.call(issued.token) == (200, None)
    lookups = rig.lookups
    assert await rig.call(token) == (401, "invalid_api_key")
    assert rig.lookups == lookups  # now refused from the digests


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("disable", (401, "key_disabled")),
        ("revoke", (401, "invalid_api_key")),
        ("delete", (401, "invalid_api_key")),
    ],
)
async def test_memory_status_changes_keep_their_401_codes(
    rig: VerifierRig, change: str, expected: tuple[int, str]
) -> None:
    token = await rig.key()
    assert await rig.call(token) == (200, None)
    assert await rig.call(wrong_secret(token)) == (401, "invalid_api_key")
    keys = rig.kg.services.keys
    actor = await rig.admin()
    if change == "disable":
        await keys.set_status(actor, key_id(token), "disabled")
    elif change == "revoke":
        await keys.revoke(actor, key_id(token))
    else:
        await keys.delete(actor, key_id(token))
    assert rig.kg.gw.cache.key_digests(key_id(token)) is None  # the notice evicted
    await rig.settle()
    assert await rig.call(token) == expected
    assert await rig.call(token) == expected
    lookups = rig.lookups
    for _ in range(10):
        assert await rig.call(wrong_secret(token)) == (401, "invalid_api_key")
    assert rig.lookups == lookups
    if change == "disable":
        await keys.set_status(actor, key_id(token), "active")
        assert await rig.call(token) == (200, None)


async def test_memory_owner_and_group_changes_keep_the_digests(rig: VerifierRig) -> None:
    actor = await rig.admin()
    await rig.kg.services.users.create(actor, {"username": "bob", "groups": ["default"]})
    token = await rig.kg.make_key(["default"], owner="bob")
    assert await rig.call(token) == (200, None)
    await rig.kg.services.users.update(actor, "bob", {"status": "disabled"})
    assert set(rig.kg.gw.cache.key_digests(key_id(token)) or ()) == {keyformat.digest(token)}
    assert await rig.call(token) == (401, "invalid_api_key")
    await rig.kg.services.users.update(actor, "bob", {"status": "active"})
    assert await rig.call(token) == (200, None)
    await rig.kg.services.users.delete(actor, "bob")  # revokes: a key notice per key
    assert rig.kg.gw.cache.key_digests(key_id(token)) is None
    assert await rig.call(token) == (401, "invalid_api_key")


async def test_memory_digests_expire_with_the_cache_ttl(
    keygate_factory: GatewayFactory, upstream: Recorder
) -> None:
    r = VerifierRig(await keygate_factory(default_route(upstream.url), cache_ttl=0.2))
    token = await r.key()
    assert await r.call(token) == (200, None)
    cache = r.kg.gw.cache
    await wait_for(
        lambda: cache.key_digests(key_id(token)) is None, within=2.0, what="digest TTL"
    )


# --- the cache's digest map on its own ------------------------------------------------------
def digest(n: int) -> bytes:
    return n.to_bytes(32, "big")


def test_memory_cache_digests_evicted_by_key_notices_only() -> None:
    cache = KeyCache(10, 60, 5)
    for kid in ("k0", "k1", "k2"):
        cache.put_key_digests(kid, frozenset([digest(0)]), cache.key_generation)
    cache.apply("user", "u1")
    cache.apply("group", "default")
    assert set(cache.key_digests("k0") or ()) == {digest(0)}
    cache.apply("key-created", "k1")  # the echo of the key's own creation
    assert set(cache.key_digests("k1") or ()) == {digest(0)}
    cache.apply("key", "k0")
    assert cache.key_digests("k0") is None
    assert set(cache.key_digests("k2") or ()) == {digest(0)}
    cache.apply("all", "")
    assert cache.key_digests("k2") is None


def test_memory_cache_digests_fill_race_and_bound() -> None:
    cache = KeyCache(2, 60, 5)
    started = cache.key_generation
    cache.apply("key", "k9")  # a key notice while the lookup ran
    cache.put_key_digests("k0", frozenset([digest(0)]), started)
    assert cache.key_digests("k0") is None
    # Owner and group notices never change digests: they do not discard a fill.
    started = cache.key_generation
    cache.apply("user", "u1")
    cache.apply("group", "default")
    cache.put_key_digests("k0", frozenset([digest(0)]), started)
    assert set(cache.key_digests("k0") or ()) == {digest(0)}
    for n in range(3):
        cache.put_key_digests(f"k{n}", frozenset([digest(n)]), cache.key_generation)
    assert cache.key_digests("k0") is None  # the least recently used went
    assert set(cache.key_digests("k2") or ()) == {digest(2)}


# --- the verifier on each store, without the app ----------------------------------------
@pytest.fixture
async def bare_store(store_url: str) -> AsyncIterator[Store]:
    st = open_store(store_url)
    await st.open()
    yield st
    await st.close()


async def test_memory_verifier_without_change_feed_trusts_memory(
    bare_store: Store, tmp_path: Path
) -> None:
    auth = AuthSettings()
    admin = await create_first_admin(ServiceContext(bare_store, auth))
    cache = KeyCache(100, 60, 5)
    verifier = Verifier(bare_store, cache, UsageRecorder(bare_store, 3600.0), "kg")
    verifier.key_ids = KeyIdSet(await bare_store.key_ids())
    # No change feed wired: memory is all there is, so it answers at once.
    assert (await verifier.verify(admin.token)).key_id == admin.key.id
    assert verifier.lookups == 1

    def check(token: str) -> Any:
        return verifier.cached(token)[1]

    for token in (wrong_secret(admin.token), forged()):
        with pytest.raises(Unauthorized):
            check(token)
    assert verifier.lookups == 1
    assert check(admin.token) is not None



async def test_memory_notices_applied_by_the_catch_up_keep_the_fill(bare_store: Store) -> None:
    admin = await create_first_admin(ServiceContext(bare_store, AuthSettings()))
    cache = KeyCache(100, 60, 5)
    verifier = Verifier(bare_store, cache, UsageRecorder(bare_store, 3600.0), "kg")
    verifier.key_ids = KeyIdSet()  # the admin key looks created after the snapshot
    key_ids = verifier.key_ids

    async def catch_up() -> None:
        # As the change feed would: an unrelated eviction, and the new key id.
        cache.apply("user", "someone-else")
        key_ids.add(admin.key.id)

    verifier.catch_up = catch_up
    digest = keyformat.digest(admin.token)
    assert verifier.cached(admin.token)[1] is None
    await verifier.load(digest, admin.token)
    # The catch-up ran before the store was read: its evictions are older than
    # the answer, which stays cached.
    assert verifier.cached(admin.token)[1] is not None
    assert set(cache.key_digests(admin.key.id) or ()) == {digest}
    assert verifier.lookups == 1


async def test_memory_request_during_a_covering_catch_up_waits_for_it(bare_store: Store) -> None:
    admin = await create_first_admin(ServiceContext(bare_store, AuthSettings()))
    cache = KeyCache(100, 60, 5)
    verifier = Verifier(bare_store, cache, UsageRecorder(bare_store, 3600.0), "kg")
    verifier.clock = FakeClock()
    verifier.key_ids = KeyIdSet()  # the admin key looks created after the snapshot
    key_ids = verifier.key_ids
    release = asyncio.Event()
    started = asyncio.Event()

    async def catch_up() -> None:
        started.set()
        await release.wait()
        key_ids.add(admin.key.id)  # the notice this catch-up brings

    verifier.catch_up = catch_up
    forged_token = forged()
    first = asyncio.create_task(verifier.load(keyformat.digest(forged_token), forged_token))
    await asyncio.wait_for(started.wait(), 2.0)
    # Arrives inside the running catch-up's window: not refused before it ends.
    digest = keyformat.digest(admin.token)
    assert verifier.cached(admin.token)[1] is None
    second = asyncio.create_task(verifier.load(digest, admin.token))
    await asyncio.sleep(0)  # let it reach the catch-up (one loop turn, not a delay)
    assert not second.done()
    release.set()
    assert (await asyncio.wait_for(second, 2.0)).key_id == admin.key.id
    with pytest.raises(Unauthorized):
        await first
