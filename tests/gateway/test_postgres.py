"""PostgreSQL-only behaviour: LISTEN/NOTIFY between nodes, reconnects, unavailability."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]
import pytest

from keygate.gateway.auth.changes import ChangeWatcher
from keygate.gateway.errors import StoreUnavailable
from keygate.gateway.store.postgres.listener import PgChangeListener
from keygate.gateway.store.postgres.migrations import PG_SCHEMA
from keygate.gateway.store.postgres.store import PostgresStore
from keygate.gateway.store.records import AuditEntry, UserRecord, utcnow
from tests.support.polling import wait_for
from tests.support.raw_upstreams import raw_server

CLOSED_PORT_URL = "postgresql://postgres@127.0.0.1:1/x"


@pytest.fixture
async def node1(pg_url: str) -> AsyncIterator[PostgresStore]:
    st = PostgresStore(pg_url, pool_size=2)
    await st.open()
    yield st
    await st.close()


@pytest.fixture
async def node2(node1: PostgresStore, pg_url: str) -> AsyncIterator[PostgresStore]:
    st = PostgresStore(pg_url, pool_size=2)
    await st.open()
    yield st
    await st.close()


async def add_user(store: PostgresStore, username: str) -> UserRecord:
    now = utcnow()
    user = UserRecord(f"u-{username}", username, "member", (), "active", now, now)
    audit = AuditEntry(action="user.create", target_type="user", target_id=user.id)
    return await store.create_user(user, audit=audit)


class Node:
    """A gateway's change plumbing: a watcher whose poll loop is too slow to matter,
    so anything applied within a second came through LISTEN/NOTIFY."""

    def __init__(self, store: PostgresStore) -> None:
        self.applied: list[tuple[str, str]] = []
        self.watcher = ChangeWatcher(store, self.apply, interval=3600)
        self.listener = store.listener(self.watcher.poll)

    async def apply(self, kind: str, ref: str) -> None:
        self.applied.append((kind, ref))

    async def start(self) -> None:
        await self.watcher.start()
        await self.listener.start()
        await asyncio.wait_for(self.listener.connected.wait(), 5)

    async def stop(self) -> None:
        await self.listener.stop()
        await self.watcher.stop()


@pytest.fixture
async def node2_gateway(node2: PostgresStore) -> AsyncIterator[Node]:
    node = Node(node2)
    await node.start()
    yield node
    await node.stop()


async def terminate_backend(url: str, pid: int) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


# --- LISTEN/NOTIFY ----------------------------------------------------------------
async def test_listener_write_on_other_node_notified_within_1s(
    node1: PostgresStore, node2_gateway: Node
) -> None:
    user = await add_user(node1, "alice")
    await wait_for(
        lambda: ("user", user.id) in node2_gateway.applied, within=1.0, what="the change notice"
    )


async def test_listener_terminated_reconnects_and_delivers_again(
    node1: PostgresStore, node2_gateway: Node, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keygate.pglisten")
    listener = node2_gateway.listener
    first_pid = listener.backend_pid
    assert first_pid is not None
    await terminate_backend(pg_url, first_pid)
    await wait_for(
        lambda: listener.connected.is_set() and listener.backend_pid != first_pid,
        within=5.0,
        what="the listener to reconnect",
    )
    user = await add_user(node1, "bob")
    await wait_for(
        lambda: ("user", user.id) in node2_gateway.applied, within=1.0, what="the change notice"
    )
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("change notices down" in m for m in messages)
    assert any("change notices recovered" in m for m in messages)


async def test_listener_missed_while_down_caught_up_on_reconnect(
    node1: PostgresStore, node2_gateway: Node
) -> None:
    await node2_gateway.listener.stop()  # down: notices for this write are lost
    user = await add_user(node1, "carol")
    await node2_gateway.listener.start()
    await wait_for(
        lambda: ("user", user.id) in node2_gateway.applied, within=5.0, what="the catch-up poll"
    )


async def test_listener_no_server_logs_down_and_stops_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="keygate.pglisten")
    calls: list[int] = []

    async def on_notice() -> None:
        calls.append(1)

    listener = PgChangeListener(CLOSED_PORT_URL, on_notice, backoff_initial=0.01)
    await listener.start()
    await wait_for(
        lambda: any("change notices down" in r.getMessage() for r in caplog.records),
        within=5.0,
        what="the down warning",
    )
    await asyncio.wait_for(listener.stop(), 1)
    assert not listener.connected.is_set() and calls == []
    downs = [r for r in caplog.records if "change notices down" in r.getMessage()]
    assert len(downs) == 1  # once per outage, not once per retry


async def test_notify_payload_is_newest_change_seq(node1: PostgresStore, pg_url: str) -> None:
    payloads: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(pg_url, timeout=5)
    try:
        await conn.add_listener("keygate_changes", lambda *a: payloads.put_nowait(a[3]))
        await add_user(node1, "dave")
        payload = await asyncio.wait_for(payloads.get(), 1)
        assert int(payload) == await node1.change_seq()
    finally:
        await conn.close()


# --- migrations across nodes ----------------------------------------------------
async def test_nodes_opening_together_migrate_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url, pool_size=1) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        every = tuple(version for version, _ in PG_SCHEMA.steps)
        assert sorted(s.applied_on_open for s in stores) == [(), (), (), every]
        assert len(await stores[0].list_groups()) == 3
    finally:
        for s in stores:
            await s.close()


# --- unavailability ---------------------------------------------------------------
async def test_open_closed_port_store_unavailable_quickly() -> None:
    store = PostgresStore(CLOSED_PORT_URL)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        await store.open()
    assert time.monotonic() - started < 2
    assert err.value.status == 503 and err.value.code == "store_unavailable"
    with pytest.raises(StoreUnavailable):
        await store.ping()


async def test_open_silent_server_times_out_store_unavailable() -> None:
    # Accepts TCP and never answers: a hung server must not hang the caller.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with raw_server(silent) as server:
        url = f"postgresql://postgres@127.0.0.1:{server.port}/x"
        store = PostgresStore(url, connect_timeout=0.3)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.open(), 5)


async def test_ping_closed_store_unavailable(node1: PostgresStore) -> None:
    await node1.ping()
    await node1.close()
    with pytest.raises(StoreUnavailable):
        await node1.ping()
    with pytest.raises(StoreUnavailable):
        await add_user(node1, "erin")


async def test_blocked_write_command_timeout_store_unavailable(pg_url: str) -> None:
    store = PostgresStore(pg_url, pool_size=2, command_timeout=0.3)
    await store.open()
    blocker = await asyncpg.connect(pg_url, timeout=5)
    try:
        await add_user(store, "frank")
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM users WHERE username = 'frank' FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.update_user(
                "frank",
                {"role": "admin"},
                audit=AuditEntry(action="user.update", target_type="user", target_id="u-frank"),
            )
        assert time.monotonic() - started < 2
        await tx.rollback()
        user = await store.get_user("frank")  # the pool recovered its connection
        assert user is not None and user.role == "member"
    finally:
        await blocker.close()
        await store.close()


@pytest.mark.parametrize("op", ["read", "write"])
async def test_pooled_connection_killed_next_call_retries(pg_url: str, op: str) -> None:
    # The first query on a connection the server dropped can race the disconnect;
    # a read, or a write that failed at BEGIN, is retried on a fresh connection.
    store = PostgresStore(pg_url, pool_size=1)
    await store.open()
    try:
        await add_user(store, "gina")
        for round_ in range(5):
            async with store._conn() as conn:
                pid = conn.get_server_pid()
            await terminate_backend(pg_url, pid)
            if op == "read":
                assert await store.get_user("gina") is not None
            else:
                await add_user(store, f"gina{round_}")
    finally:
        await store.close()


async def test_postgres_unstorable_value_is_bad_request_not_500(node1: PostgresStore) -> None:
    from keygate.gateway.errors import BadRequest

    # Validation refuses NULs it knows of; the store maps whatever slips past
    # to the client's error instead of an internal one.
    with pytest.raises(BadRequest):
        await node1.get_user("a\u0000b")


# --- issue 16: a newer store, a full disk ------------------------------------------
async def test_postgres_store_from_newer_keygate_refused(pg_url: str) -> None:
    from keygate.gateway.errors import StoreTooNew

    store = PostgresStore(pg_url, pool_size=1)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(pg_url, timeout=5)
    try:
        await conn.execute("INSERT INTO schema_version (version) VALUES (42)")
    finally:
        await conn.close()
    with pytest.raises(StoreTooNew) as err:
        await PostgresStore(pg_url, pool_size=1).open()
    assert err.value.message.startswith(
        f"store schema 42 is newer than this keygate ({PG_SCHEMA.newest})"
    )


async def test_postgres_disk_full_is_insufficient_storage_logged_once(
    node1: PostgresStore, caplog: pytest.LogCaptureFixture
) -> None:
    from keygate.gateway.errors import InsufficientStorage

    # PostgreSQL's disk_full (SQLSTATE 53100), as a write that cannot extend a
    # table gets it: 507, not a 503 for an unreachable store.
    node1.health.reporting = True

    async def full(conn: object) -> None:
        raise asyncpg.exceptions.DiskFullError("could not extend file: No space left on device")

    for _ in range(3):
        with pytest.raises(InsufficientStorage):
            await node1._tx(full)
    assert node1.health.full and not node1.health.down
    assert caplog.text.count("out of space") == 1
    assert await node1.write_problem() is not None
    await add_user(node1, "hana")  # a write that succeeds: writable again
    assert not node1.health.full
    assert await node1.write_problem() is None
    assert caplog.text.count("takes writes again") == 1


# --- the poll rests while LISTEN delivers everything -------------------------------
class CountingPg(PostgresStore):
    reads = 0

    async def changes_since(self, seq: int) -> list:  # type: ignore[type-arg]
        self.reads += 1
        return await super().changes_since(seq)


async def test_poll_rests_while_listen_is_up_and_resumes_when_it_is_down(pg_url: str) -> None:
    from keygate.gateway.auth.changes import ChangeFeed

    store = CountingPg(pg_url, pool_size=2)
    await store.open()
    applied: list[tuple[str, str]] = []

    async def apply(kind: str, ref: str) -> None:
        applied.append((kind, ref))

    feed = ChangeFeed(store, apply, 0.02)  # a poll every 20 ms, were it not resting
    await feed.start()
    try:
        listener = feed._listener
        assert isinstance(listener, PgChangeListener)
        await asyncio.wait_for(listener.connected.wait(), 5)
        await asyncio.sleep(0.1)  # the connect's catch-up read is done
        before = store.reads
        await asyncio.sleep(0.5)  # idle: ~25 polls' time
        assert store.reads - before <= 1
        # A change still arrives, pushed.
        other = PostgresStore(pg_url, pool_size=1)
        await other.open()
        try:
            bob = await add_user(other, "bob")
            await wait_for(lambda: ("user", bob.id) in applied, within=2.0, what="the notice")
            # LISTEN gone: the poll takes over at once.
            await listener.stop()
            before = store.reads
            await wait_for(lambda: store.reads >= before + 5, within=2.0, what="the poll")
            eve = await add_user(other, "eve")
            await wait_for(lambda: ("user", eve.id) in applied, within=2.0, what="a polled change")
        finally:
            await other.close()
    finally:
        await feed.stop()
        await store.close()
