"""Verification and the key cache end to end (docs/reference.md#the-proxy).

Store lookups are counted on a real SQLiteStore subclass (``CountingStore``)
as well as by the verifier; changes are made through the services, or through
a second store connection on the same file as the CLI would.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosqlite
import pytest

from keygate.gateway.auth import keyformat
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.store import open_store
from tests.support.gateway import GatewayFactory, Keygate, default_route, key_id
from tests.support.polling import wait_for
from tests.support.stores import CountingFactory, CountingStore, settle, store_path
from tests.support.upstreams import Recorder, header_values


async def call(kg: Keygate, token: str, path: str = "/x") -> tuple[int, str | None]:
    resp = await kg.client.get(path, headers={"X-API-Key": token})
    if resp.status == 200:
        await resp.read()
        return 200, None
    return resp.status, (await resp.json())["error"]["code"]



@pytest.fixture
async def counted(
    counting_keygate_factory: CountingFactory, upstream: Recorder
) -> tuple[Keygate, CountingStore]:
    return await counting_keygate_factory(default_route(upstream.url))


async def add_member(kg: Keygate, username: str, groups: list[str]) -> None:
    await kg.services.users.create(await kg.admin_actor(), {"username": username, "groups": groups})


# --- cache hits and refusals without lookups -----------------------------------------
async def test_verify_cache_hit_does_no_store_query(counted: tuple[Keygate, CountingStore]) -> None:
    kg, st = counted
    token = await kg.make_key(["default"])
    await settle(st)
    assert await call(kg, token) == (200, None)
    assert st.auth_lookups == 1
    assert kg.gw.verifier.lookups == 1
    hits = kg.gw.cache.hits
    for _ in range(5):
        assert await call(kg, token) == (200, None)
    assert st.auth_lookups == 1
    assert kg.gw.verifier.lookups == 1
    assert kg.gw.cache.hits == hits + 5


def _mutated(token: str) -> str:
    # Change one secret character: the checksum no longer matches.
    i = len(token) - 10
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda t: "nope",
        lambda t: t[:-1],
        lambda t: t + "x",
        _mutated,
        lambda t: t[:-6] + "000000",
        lambda t: "xx" + t[2:],
        lambda t: t.upper(),
    ],
    ids=["garbage", "short", "long", "typo", "checksum", "prefix", "case"],
)
async def test_verify_bad_format_makes_no_cache_or_store_lookup(
    counted: tuple[Keygate, CountingStore], make_bad: Callable[[str], str]
) -> None:
    kg, st = counted
    token = await kg.make_key(["default"])
    cache = kg.gw.cache
    hits = cache.hits
    assert await call(kg, make_bad(token)) == (401, "invalid_api_key")
    # Verifier.cached looks the digest up first (a cached digest passed the
    # format check when it was loaded); a malformed token is never admitted
    # and never reaches the store.
    assert cache.hits == hits
    assert st.auth_lookups == 0
    assert kg.gw.verifier.lookups == 0


async def test_verify_unknown_key_is_negatively_cached(
    counted: tuple[Keygate, CountingStore],
) -> None:
    kg, st = counted
    token = await kg.make_key(["default"])
    await settle(st)
    # A real key id with a wrong secret: one lookup, then the negative cache.
    key_id = keyformat.parse(token, "kg").key_id
    unknown, _ = keyformat.generate("kg", key_id)
    assert await call(kg, unknown) == (401, "invalid_api_key")
    assert st.auth_lookups == 1
    for _ in range(3):
        assert await call(kg, unknown) == (401, "invalid_api_key")
    assert st.auth_lookups == 1


async def test_verify_forged_key_ids_cost_no_store_lookup(
    counted: tuple[Keygate, CountingStore],
) -> None:
    kg, st = counted
    await settle(st)
    for _ in range(20):
        forged, _ = keyformat.generate("kg")  # valid checksum, random key id
        assert await call(kg, forged) == (401, "invalid_api_key")
    assert st.auth_lookups == 0


async def test_verify_key_created_by_another_connection_works_at_once(
    counted: tuple[Keygate, CountingStore],
) -> None:
    kg, st = counted
    await settle(st)
    # As the CLI or another worker would: a second store on the same file.
    other = open_store(kg.settings.store.url)
    await other.open()
    try:
        user = await other.get_user("admin")
        assert user is not None
        ctx = ServiceContext(other, kg.settings.auth)
        actor = Actor(user.id, user.username, None, ("admin",), "test")
        issued = await Services.build(ctx).keys.create(actor, {"groups": ["default"]})
    finally:
        await other.close()
    # No waiting for the poll loop: a miss catches up with the change feed first.
    assert await call(kg, issued.token) == (200, None)


async def test_verify_negative_entry_expires_after_its_ttl(
    counting_keygate_factory: CountingFactory, upstream: Recorder
) -> None:
    kg, st = await counting_keygate_factory(default_route(upstream.url), negative_cache_ttl=0.2)
    token = await kg.make_key(["default"])
    await settle(st)
    # A real key id with a wrong secret reaches the store (a forged id does not).
    key_id = keyformat.parse(token, "kg").key_id
    unknown, _ = keyformat.generate("kg", key_id)
    assert await call(kg, unknown) == (401, "invalid_api_key")
    assert st.auth_lookups == 1
    # That lookup also taught memory the key's digests, which would refuse the
    # token with no query at all; forget them so only the negative entry answers.
    kg.gw.cache.evict_key(key_id)
    assert kg.gw.cache.is_known_unknown(keyformat.digest(unknown))

    async def looked_up_again() -> bool:
        assert await call(kg, unknown) == (401, "invalid_api_key")
        return st.auth_lookups == 2

    await wait_for(looked_up_again, within=2.0, what="a second lookup")


# --- key and owner states ----------------------------------------------------------------
async def test_verify_disabled_key_is_401_key_disabled(keygate: Keygate) -> None:
    token = await keygate.make_key(["default"])
    assert await call(keygate, token) == (200, None)
    actor = await keygate.admin_actor()
    await keygate.services.keys.set_status(actor, key_id(token), "disabled")
    assert await call(keygate, token) == (401, "key_disabled")
    await keygate.services.keys.set_status(actor, key_id(token), "active")
    assert await call(keygate, token) == (200, None)


async def test_verify_expired_key_is_401_key_expired(keygate: Keygate) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=1)
    token = await keygate.make_key(["default"], expires_at=expires.isoformat())
    assert await call(keygate, token) == (200, None)

    async def expired() -> bool:
        status = await call(keygate, token)
        assert status in ((200, None), (401, "key_expired"))
        return status == (401, "key_expired")

    await wait_for(expired, within=3.0, what="key expiry")
    record = await keygate.gw.store.get_key(key_id(token))
    assert record.effective_status() == "expired"


async def test_verify_revoked_key_is_401_invalid(keygate: Keygate) -> None:
    token = await keygate.make_key(["default"])
    assert await call(keygate, token) == (200, None)
    await keygate.services.keys.revoke(await keygate.admin_actor(), key_id(token))
    assert await call(keygate, token) == (401, "invalid_api_key")


async def test_verify_deleted_key_is_401_invalid(keygate: Keygate) -> None:
    token = await keygate.make_key(["default"])
    assert await call(keygate, token) == (200, None)
    await keygate.services.keys.delete(await keygate.admin_actor(), key_id(token))
    assert await call(keygate, token) == (401, "invalid_api_key")


async def test_verify_rolled_key_old_token_fails_at_once(keygate: Keygate) -> None:
    token = await keygate.make_key(["default"])
    assert await call(keygate, token) == (200, None)
    issued = await keygate.services.keys.roll(await keygate.admin_actor(), key_id(token), {})
    assert await call(keygate, token) == (401, "invalid_api_key")
    assert await call(keygate, issued.token) == (200, None)


async def test_verify_owner_disabled_makes_keys_invalid(keygate: Keygate) -> None:
    await add_member(keygate, "bob", ["default"])
    token = await keygate.make_key(["default"], owner="bob")
    assert await call(keygate, token) == (200, None)
    actor = await keygate.admin_actor()
    await keygate.services.users.update(actor, "bob", {"status": "disabled"})
    assert await call(keygate, token) == (401, "invalid_api_key")
    await keygate.services.users.update(actor, "bob", {"status": "active"})
    assert await call(keygate, token) == (200, None)


async def test_verify_owner_deleted_makes_keys_invalid(keygate: Keygate) -> None:
    await add_member(keygate, "bob", ["default"])
    token = await keygate.make_key(["default"], owner="bob")
    assert await call(keygate, token) == (200, None)
    await keygate.services.users.delete(await keygate.admin_actor(), "bob")
    assert await call(keygate, token) == (401, "invalid_api_key")


async def test_verify_owner_narrowed_key_is_403_at_once(keygate: Keygate) -> None:
    await add_member(keygate, "bob", ["default"])
    token = await keygate.make_key(["default"], owner="bob")
    assert await call(keygate, token) == (200, None)
    await keygate.services.users.update(await keygate.admin_actor(), "bob", {"groups": []})
    assert await call(keygate, token) == (403, "forbidden")


async def test_verify_demoted_admin_key_loses_groups_at_once(keygate: Keygate) -> None:
    actor = await keygate.admin_actor()
    await keygate.services.users.create(actor, {"username": "carol", "role": "admin"})
    token = await keygate.make_key(["default"], owner="carol")
    assert await call(keygate, token) == (200, None)
    await keygate.services.users.update(actor, "carol", {"role": "member"})
    assert await call(keygate, token) == (403, "forbidden")


async def test_verify_effective_groups_reach_upstream(keygate: Keygate) -> None:
    actor = await keygate.admin_actor()
    await keygate.services.groups.create(
        actor, {"name": "extra", "rules": [{"route": "*", "methods": ["GET"], "paths": ["/**"]}]}
    )
    await add_member(keygate, "bob", ["default", "extra"])
    token = await keygate.make_key(["default", "extra"], owner="bob")
    resp = await keygate.client.get("/x", headers={"X-API-Key": token})
    assert header_values(await resp.json(), "X-Keygate-Groups") == ["default,extra"]
    await keygate.services.users.update(actor, "bob", {"groups": ["extra"]})
    resp = await keygate.client.get("/x", headers={"X-API-Key": token})
    assert header_values(await resp.json(), "X-Keygate-Groups") == ["extra"]


# --- changes take effect ------------------------------------------------------------
async def test_verify_service_change_evicts_without_waiting(
    counted: tuple[Keygate, CountingStore],
) -> None:
    kg, st = counted
    token = await kg.make_key(["default"])
    await settle(st)
    assert await call(kg, token) == (200, None)
    assert await call(kg, token) == (200, None)
    assert st.auth_lookups == 1
    await kg.services.keys.set_status(await kg.admin_actor(), key_id(token), "disabled")
    assert await call(kg, token) == (401, "key_disabled")
    assert st.auth_lookups == 2


async def test_verify_group_rule_change_applies_at_once(keygate: Keygate) -> None:
    actor = await keygate.admin_actor()
    rule = {"route": "default", "methods": ["GET"], "paths": ["/r/**"]}
    await keygate.services.groups.create(actor, {"name": "reader", "rules": [rule]})
    token = await keygate.make_key(["reader"])
    assert await call(keygate, token, "/r/x") == (200, None)
    assert await call(keygate, token, "/s/x") == (403, "forbidden")
    await keygate.services.groups.update(actor, "reader", {"rules": [rule | {"paths": ["/s/**"]}]})
    assert await call(keygate, token, "/r/x") == (403, "forbidden")
    assert await call(keygate, token, "/s/x") == (200, None)


@pytest.fixture
async def other_connection(keygate: Keygate) -> AsyncIterator[tuple[Services, Actor]]:
    """Services on a second store connection to the same file: what the CLI does."""
    other = open_store(keygate.settings.store.url)
    await other.open()
    user = await other.get_user("admin")
    assert user is not None
    yield (
        Services.build(ServiceContext(other, keygate.settings.auth)),
        Actor(user.id, user.username, None, ("admin",), "cli"),
    )
    await other.close()


Change = Callable[[Services, Actor, str], Awaitable[Any]]


async def _disable_key(s: Services, a: Actor, key_id: str) -> Any:
    return await s.keys.set_status(a, key_id, "disabled")


async def _delete_key(s: Services, a: Actor, key_id: str) -> Any:
    return await s.keys.delete(a, key_id)


async def _disable_owner(s: Services, a: Actor, key_id: str) -> Any:
    return await s.users.update(a, "bob", {"status": "disabled"})


async def _narrow_owner(s: Services, a: Actor, key_id: str) -> Any:
    return await s.users.update(a, "bob", {"groups": []})


async def _narrow_group(s: Services, a: Actor, key_id: str) -> Any:
    rules = [{"route": "*", "methods": ["POST"], "paths": ["/**"]}]
    return await s.groups.update(a, "reader", {"rules": rules})


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_disable_key, (401, "key_disabled")),
        (_delete_key, (401, "invalid_api_key")),
        (_disable_owner, (401, "invalid_api_key")),
        (_narrow_owner, (403, "forbidden")),
        (_narrow_group, (403, "forbidden")),
    ],
    ids=["disable-key", "delete-key", "disable-owner", "narrow-owner", "narrow-group"],
)
async def test_verify_change_from_other_connection_seen_within_1s(
    keygate: Keygate,
    other_connection: tuple[Services, Actor],
    change: Change,
    expected: tuple[int, str],
) -> None:
    actor = await keygate.admin_actor()
    rules = [{"route": "*", "methods": ["GET"], "paths": ["/**"]}]
    await keygate.services.groups.create(actor, {"name": "reader", "rules": rules})
    await add_member(keygate, "bob", ["reader"])
    token = await keygate.make_key(["reader"], owner="bob")
    assert await call(keygate, token) == (200, None)
    assert await call(keygate, token) == (200, None)  # now served from the cache
    services, cli = other_connection
    await change(services, cli, key_id(token))
    started = time.monotonic()

    async def refused() -> bool:
        return await call(keygate, token) == expected

    await wait_for(refused, within=1.0, what="the other connection's change")
    assert time.monotonic() - started < 1.0


async def test_verify_lost_notice_is_bounded_by_cache_ttl(
    keygate_factory: GatewayFactory, upstream: Recorder
) -> None:
    kg = await keygate_factory(default_route(upstream.url), cache_ttl=0.3)
    if not kg.settings.store.url.startswith("sqlite:"):
        pytest.skip("writes the SQLite file behind the store's back")
    token = await kg.make_key(["default"])
    assert await call(kg, token) == (200, None)
    # A write that leaves no change notice: only cache_ttl can catch it.
    async with aiosqlite.connect(store_path(kg)) as db:
        await db.execute("UPDATE keys SET status = 'disabled' WHERE id = ?", (key_id(token),))
        await db.execute("DELETE FROM changes")
        await db.commit()

    async def refused() -> bool:
        return await call(kg, token) == (401, "key_disabled")

    await wait_for(refused, within=2.0, what="cache_ttl expiry")


async def test_verify_concurrent_forged_ids_share_catch_ups_and_never_block(
    counted: tuple[Keygate, CountingStore],
) -> None:
    import asyncio

    kg, st = counted
    token = await kg.make_key(["default"])
    await settle(st)
    forged = [keyformat.generate("kg")[0] for _ in range(300)]
    # Concurrent misses that find a finished catch-up must not spin (a finished
    # future never yields): every request is answered, and quickly.
    results = await asyncio.wait_for(asyncio.gather(*(call(kg, f) for f in forged)), 20)
    assert set(results) == {(401, "invalid_api_key")}
    assert st.auth_lookups == 0
    assert await call(kg, token) == (200, None)
