"""The change feed: every write leaves a notice in its transaction; the watcher
applies other connections' notices and costs one probe per idle tick."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from keygate.config.settings import AuthSettings
from keygate.gateway.auth.changes import ChangeWatcher
from keygate.gateway.errors import StoreUnavailable
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.store.sqlite.store import SQLiteStore
from tests.support.polling import wait_for
from tests.support.stores import CountingStore

Applied = list[tuple[str, str]]


@pytest.fixture
async def counting_store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    st = CountingStore(tmp_path / "changes.db")
    await st.open()
    yield st
    await st.close()


@pytest.fixture
async def other(counting_store: CountingStore) -> AsyncIterator[SQLiteStore]:
    """A second connection to the same file: another worker, or the CLI."""
    st = SQLiteStore(counting_store.path)
    await st.open()
    yield st
    await st.close()


async def admin_services(store: SQLiteStore) -> tuple[Services, Actor]:
    ctx = ServiceContext(store, AuthSettings())
    if await store.count_admins() == 0:
        await create_first_admin(ctx)
    user = await store.get_user("admin")
    assert user is not None
    return Services.build(ctx), Actor(user.id, user.username, None, ("admin",), "cli")


@pytest.fixture
async def watching(counting_store: CountingStore) -> AsyncIterator[tuple[ChangeWatcher, Applied]]:
    applied: Applied = []

    async def apply(kind: str, ref: str) -> None:
        applied.append((kind, ref))

    watcher = ChangeWatcher(counting_store, apply, 0.02)
    await watcher.start()
    yield watcher, applied
    await watcher.stop()


async def test_changes_watcher_applies_other_connections_notices(
    watching: tuple[ChangeWatcher, Applied], other: SQLiteStore
) -> None:
    _, applied = watching
    services, actor = await admin_services(other)
    bob = await services.users.create(actor, {"username": "bob", "groups": ["default"]})
    await wait_for(lambda: ("user", bob.id) in applied, within=1.0, what="the user notice")
    issued = await services.keys.create(actor, {"groups": ["default"], "owner": "bob"})
    await services.keys.set_status(actor, issued.key.id, "disabled")
    key_id = issued.key.id
    await wait_for(
        lambda: ("key-created", key_id) in applied and ("key", key_id) in applied,
        within=1.0,
        what="the key notices",
    )


async def test_changes_watcher_skips_notices_from_before_its_start(
    counting_store: CountingStore, other: SQLiteStore
) -> None:
    services, actor = await admin_services(other)
    before = await services.users.create(actor, {"username": "early"})
    applied: Applied = []

    async def apply(kind: str, ref: str) -> None:
        applied.append((kind, ref))

    watcher = ChangeWatcher(counting_store, apply, 0.02)
    await watcher.start()
    try:
        after = await services.users.create(actor, {"username": "late"})
        await wait_for(lambda: ("user", after.id) in applied, within=1.0, what="the notice")
    finally:
        await watcher.stop()
    assert ("user", before.id) not in applied


async def test_changes_idle_poll_reads_nothing(
    counting_store: CountingStore, watching: tuple[ChangeWatcher, Applied]
) -> None:
    watcher, applied = watching
    await wait_for(lambda: counting_store.version_probes >= 10, within=2.0, what="ten probes")
    # At most the first tick reads the feed (it has no version to compare yet).
    assert counting_store.changes_reads <= 1
    assert applied == []
    assert await watcher.poll() == 0


async def test_changes_watcher_survives_a_store_outage(
    tmp_path: Path, other: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    class OutageStore(CountingStore):
        down = True

        async def data_version(self) -> int:
            self.version_probes += 1
            if self.down and self.version_probes <= 3:
                raise StoreUnavailable
            return await super().data_version()

        def data_version_now(self) -> int | None:
            # The loop's probe finds nothing while down: the awaited probe is asked.
            return None if self.down and self.version_probes < 3 else super().data_version_now()

    caplog.set_level(logging.DEBUG, "keygate.changes")  # the store logs outages; this debug
    st = OutageStore(other.path)
    await st.open()
    applied: Applied = []

    async def apply(kind: str, ref: str) -> None:
        applied.append((kind, ref))

    watcher = ChangeWatcher(st, apply, 0.02)
    await watcher.start()
    try:
        services, actor = await admin_services(other)
        bob = await services.users.create(actor, {"username": "bob"})
        await wait_for(lambda: ("user", bob.id) in applied, within=2.0, what="recovery")
    finally:
        await watcher.stop()
        await st.close()
    assert "change feed unavailable" in caplog.text
    assert "change feed recovered" in caplog.text


# --- every write leaves its notice -----------------------------------------------------
Write = Callable[[Services, Actor], Awaitable[Any]]


async def _bob(s: Services, a: Actor) -> Any:
    return await s.users.create(a, {"username": "bob", "groups": ["default", "team"]})


async def _bob_key(s: Services, a: Actor) -> str:
    await _bob(s, a)
    return (await s.keys.create(a, {"groups": ["default", "team"], "owner": "bob"})).key.id


async def _team(s: Services, a: Actor) -> Any:
    return await s.groups.create(a, {"name": "team", "rules": []})


async def _create_user(s: Services, a: Actor) -> set[tuple[str, str]]:
    bob = await s.users.create(a, {"username": "bob"})
    return {("user", bob.id)}


async def _update_user(s: Services, a: Actor) -> set[tuple[str, str]]:
    bob = await s.users.create(a, {"username": "bob"})
    await s.users.update(a, "bob", {"status": "disabled"})
    return {("user", bob.id)}


async def _delete_user(s: Services, a: Actor) -> set[tuple[str, str]]:
    await _team(s, a)
    key_id = await _bob_key(s, a)
    bob = await s.users.get(a, "bob")
    await s.users.delete(a, "bob")
    return {("user", bob.id), ("key", key_id)}


async def _create_key(s: Services, a: Actor) -> set[tuple[str, str]]:
    return {("key-created", (await s.keys.create(a, {"groups": ["default"]})).key.id)}


async def _update_key(s: Services, a: Actor) -> set[tuple[str, str]]:
    key_id = (await s.keys.create(a, {"groups": ["default"]})).key.id
    await s.keys.update(a, key_id, {"description": "changed"})
    return {("key", key_id)}


async def _roll_key(s: Services, a: Actor) -> set[tuple[str, str]]:
    key_id = (await s.keys.create(a, {"groups": ["default"]})).key.id
    await s.keys.roll(a, key_id, {})
    return {("key", key_id)}


async def _revoke_key(s: Services, a: Actor) -> set[tuple[str, str]]:
    key_id = (await s.keys.create(a, {"groups": ["default"]})).key.id
    await s.keys.revoke(a, key_id)
    return {("key", key_id)}


async def _delete_key(s: Services, a: Actor) -> set[tuple[str, str]]:
    key_id = (await s.keys.create(a, {"groups": ["default"]})).key.id
    await s.keys.delete(a, key_id)
    return {("key", key_id)}


async def _create_group(s: Services, a: Actor) -> set[tuple[str, str]]:
    await _team(s, a)
    return {("group", "team")}


async def _update_group(s: Services, a: Actor) -> set[tuple[str, str]]:
    await _team(s, a)
    await s.groups.update(a, "team", {"description": "changed"})
    return {("group", "team")}


async def _force_delete_group(s: Services, a: Actor) -> set[tuple[str, str]]:
    await _team(s, a)
    key_id = await _bob_key(s, a)
    bob = await s.users.get(a, "bob")
    await s.groups.delete(a, "team", force=True)
    return {("group", "team"), ("user", bob.id), ("key", key_id)}


@pytest.mark.parametrize(
    "write",
    [
        _create_user,
        _update_user,
        _delete_user,
        _create_key,
        _update_key,
        _roll_key,
        _revoke_key,
        _delete_key,
        _create_group,
        _update_group,
        _force_delete_group,
    ],
)
async def test_changes_every_write_leaves_a_notice(
    counting_store: CountingStore, write: Callable[[Services, Actor], Awaitable[set[Any]]]
) -> None:
    services, actor = await admin_services(counting_store)
    seq = await counting_store.change_seq()
    expected = await write(services, actor)
    notices = {(c.kind, c.ref) for c in await counting_store.changes_since(seq)}
    assert expected <= notices


async def test_changes_last_used_flush_leaves_no_notice(counting_store: CountingStore) -> None:
    # Otherwise every flush on one worker would evict every other worker's cache.
    issued = await create_first_admin(ServiceContext(counting_store, AuthSettings()))
    seq = await counting_store.change_seq()
    await counting_store.touch_last_used({issued.key.id: 1000.0})
    assert await counting_store.changes_since(seq) == []
