"""The SQLite store: durability under kill -9, uniqueness, limits, digests only,
migrations, per-connection pragmas, audit in the same transaction."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import aiosqlite
import pytest

from keygate.config.settings import AuthSettings
from keygate.gateway.auth import keyformat
from keygate.gateway.errors import Conflict
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.store.errors import KeyRevoked, UniqueViolation
from keygate.gateway.store.records import AuditEntry, KeyRecord, UserRecord, utcnow
from keygate.gateway.store.sqlbase import Conn
from keygate.gateway.store.sqlite.connection import bind
from keygate.gateway.store.sqlite.migrations import SQLITE_SCHEMA
from keygate.gateway.store.sqlite.store import SQLiteStore

REPO = Path(__file__).resolve().parents[2]

# Creates keys through the services in a loop and prints each id only after
# create() returned, i.e. after the store acknowledged the commit.
WRITER = """
import asyncio, sys
from keygate.config.settings import AuthSettings
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.store.sqlite.store import SQLiteStore

async def main(path):
    store = SQLiteStore(path)
    await store.open()
    ctx = ServiceContext(store, AuthSettings(max_keys_per_user=1_000_000))
    await create_first_admin(ctx)
    user = await store.get_user("admin")
    actor = Actor(user.id, user.username, None, ("admin",), "test")
    keys = Services.build(ctx).keys
    while True:
        issued = await keys.create(actor, {"groups": ["default"]})
        sys.stdout.write(issued.key.id + "\\n")
        sys.stdout.flush()

asyncio.run(main(sys.argv[1]))
"""


async def services_for(store: SQLiteStore, **auth: int) -> tuple[Services, Actor]:
    ctx = ServiceContext(store, AuthSettings(**auth))  # type: ignore[arg-type]
    await create_first_admin(ctx)
    user = await store.get_user("admin")
    assert user is not None
    return Services.build(ctx), Actor(user.id, user.username, None, ("admin",), "test")


async def add_user(store: SQLiteStore, username: str, role: str = "member") -> UserRecord:
    now = utcnow()
    user = UserRecord(f"u_{username}", username, role, ("default",), "active", now, now)
    return await store.create_user(user, audit=None)


def key_record(owner: UserRecord, key_id: str, name: str) -> KeyRecord:
    now = utcnow()
    return KeyRecord(
        id=key_id,
        prefix="kg",
        last4="abcd",
        name=name,
        description="",
        status="active",
        groups=("default",),
        owner_id=owner.id,
        owner_username=owner.username,
        created_by_id=None,
        created_by_username=None,
        created_at=now,
        updated_at=now,
        last_used_at=None,
        expires_at=None,
        webhook_url=None,
    )


def audit_for(key_id: str) -> AuditEntry:
    return AuditEntry("key.create", "key", key_id)


def store_bytes(directory: Path, name: str) -> bytes:
    """The database file and its -wal/-shm companions, concatenated."""
    return b"".join(
        p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.name.startswith(name) and p.is_file()  # not the -wake directory
    )


async def audit_count(store: SQLiteStore) -> int:
    return len((await store.list_audit(500, None)).items)


# --- durability -----------------------------------------------------------------
async def test_store_kill_9_mid_burst_keeps_every_acknowledged_key(tmp_path: Path) -> None:
    path = tmp_path / "durable.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER,
        str(path),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    acked: list[str] = []
    try:
        async with asyncio.timeout(20):
            while len(acked) < 100:
                line = await proc.stdout.readline()
                assert line, "the writer exited before acknowledging 100 keys"
                acked.append(line.decode().strip())
    finally:
        proc.kill()  # SIGKILL: no cleanup, no final fsync, mid-burst
    # Ids already in the pipe were acknowledged too; a partial last line was not.
    rest = await proc.stdout.read()
    acked += [line for line in rest.decode().split("\n")[:-1] if line]
    assert await proc.wait() == -9

    store = SQLiteStore(path)
    await store.open()
    try:
        missing = [key_id for key_id in acked if await store.get_key(key_id) is None]
    finally:
        await store.close()
    assert missing == []


# --- uniqueness and limits ------------------------------------------------------
async def test_store_same_digest_twice_is_unique_violation(store: SQLiteStore) -> None:
    owner = await add_user(store, "alice")
    digest = keyformat.digest(keyformat.generate("kg")[0])
    await store.create_key(
        key_record(owner, "aaaaaaaaaaaa", "one"), digest, max_keys=10, audit=audit_for("a")
    )
    with pytest.raises(UniqueViolation) as info:
        await store.create_key(
            key_record(owner, "bbbbbbbbbbbb", "two"), digest, max_keys=10, audit=audit_for("b")
        )
    assert info.value.what == "other"
    assert await store.get_key("bbbbbbbbbbbb") is None


async def test_store_same_key_id_twice_is_unique_violation(store: SQLiteStore) -> None:
    owner = await add_user(store, "alice")
    await store.create_key(
        key_record(owner, "aaaaaaaaaaaa", "one"), b"1" * 32, max_keys=10, audit=audit_for("a")
    )
    with pytest.raises(UniqueViolation) as info:
        await store.create_key(
            key_record(owner, "aaaaaaaaaaaa", "two"), b"2" * 32, max_keys=10, audit=audit_for("a")
        )
    assert info.value.what == "other"


@pytest.mark.parametrize(
    ("first", "second"),
    [("billing", "billing"), ("Billing", "bILLING"), ("Straße", "STRASSE"), ("ΣΑΣ", "σας")],
)
async def test_store_key_name_taken_case_insensitively_is_409(
    store: SQLiteStore, first: str, second: str
) -> None:
    services, actor = await services_for(store)
    await services.keys.create(actor, {"name": first, "groups": ["default"]})
    with pytest.raises(Conflict) as info:
        await services.keys.create(actor, {"name": second, "groups": ["default"]})
    assert info.value.status == 409
    assert info.value.code == "name_taken"


async def test_store_key_rename_onto_taken_name_is_409(store: SQLiteStore) -> None:
    services, actor = await services_for(store)
    await services.keys.create(actor, {"name": "Sync", "groups": ["default"]})
    other = await services.keys.create(actor, {"name": "other", "groups": ["default"]})
    with pytest.raises(Conflict) as info:
        await services.keys.update(actor, other.key.id, {"name": "SYNC"})
    assert info.value.code == "name_taken"
    assert (await store.get_key(other.key.id)).name == "other"  # type: ignore[union-attr]


async def test_store_key_name_is_per_owner(store: SQLiteStore) -> None:
    services, actor = await services_for(store)
    await services.users.create(actor, {"username": "bob", "groups": ["default"]})
    await services.keys.create(actor, {"name": "sync", "groups": ["default"]})
    issued = await services.keys.create(
        actor, {"name": "SYNC", "groups": ["default"], "owner": "bob"}
    )
    assert issued.key.owner_username == "bob"


async def test_store_key_limit_counts_keys_not_revoked(store: SQLiteStore) -> None:
    # The bootstrap admin already holds its "admin" key: one more reaches 2.
    services, actor = await services_for(store, max_keys_per_user=2)
    second = await services.keys.create(actor, {"groups": ["default"]})
    await services.keys.set_status(actor, second.key.id, "disabled")  # still counts
    with pytest.raises(Conflict) as info:
        await services.keys.create(actor, {"groups": ["default"]})
    assert info.value.status == 409
    assert info.value.code == "key_limit_reached"
    await services.keys.revoke(actor, second.key.id)
    await services.keys.create(actor, {"groups": ["default"]})


async def test_store_key_limit_holds_across_concurrent_connections(store: SQLiteStore) -> None:
    # Two writers (say the CLI and a worker) race to create keys for one owner.
    services, actor = await services_for(store, max_keys_per_user=5)
    second = SQLiteStore(store.path)
    await second.open()
    try:
        others = Services.build(ServiceContext(second, AuthSettings(max_keys_per_user=5)))
        results = await asyncio.gather(
            *(
                (services if i % 2 else others).keys.create(actor, {"groups": ["default"]})
                for i in range(12)
            ),
            return_exceptions=True,
        )
    finally:
        await second.close()
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(results) - len(refused) == 4  # plus the bootstrap admin key: 5
    assert all(r.code == "key_limit_reached" for r in refused)
    keys, _ = await services.keys.list(actor)
    assert len(keys) == 5


# --- only the digest ----------------------------------------------------------
async def test_store_keeps_only_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "secret.db"
    store = SQLiteStore(path)
    await store.open()
    services, actor = await services_for(store)
    issued = await services.keys.create(actor, {"groups": ["default"]})
    rolled = await services.keys.roll(actor, issued.key.id, {"grace_seconds": 60})
    await store.close()
    files = store_bytes(tmp_path, "secret.db")
    for token in (issued.token, rolled.token):
        secret = keyformat.parse(token, "kg").secret
        assert token.encode() not in files
        assert secret.encode() not in files
        assert secret[:16].encode() not in files
        # The scan does see the store's contents: the digests are there.
        assert keyformat.digest(token) in files


# --- migrations and pragmas -------------------------------------------------------
async def test_store_migrations_apply_once_and_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    first = SQLiteStore(path)
    await first.open()
    assert first.applied_on_open == tuple(version for version, _ in SQLITE_SCHEMA.steps)
    assert await first.migrate() == []
    await first.close()
    again = SQLiteStore(path)
    await again.open()
    try:
        assert again.applied_on_open == ()
        assert await again.migrate() == []
        groups = [g.name for g in await again.list_groups()]
        assert groups == ["admin", "default", "self-service"]
    finally:
        await again.close()
    async with aiosqlite.connect(path) as db:
        cur = await db.execute("SELECT version FROM schema_version")
        assert list(await cur.fetchall()) == [(version,) for version, _ in SQLITE_SCHEMA.steps]


@pytest.mark.parametrize(
    ("sql", "args", "expected"),
    [
        ("SELECT $1", (7,), ("SELECT ?", (7,))),
        ("SELECT $2, $1, $2", ("a", "b"), ("SELECT ?, ?, ?", ("b", "a", "b"))),
        ("x LIKE $1 OR y LIKE $1", ("%k%",), ("x LIKE ? OR y LIKE ?", ("%k%", "%k%"))),
        ("SELECT $10, $1", tuple(range(1, 11)), ("SELECT ?, ?", (10, 1))),
        # A JSON path is not a parameter.
        (
            "json_extract(changes, '$.status') = $1",
            ("disabled",),
            ("json_extract(changes, '$.status') = ?", ("disabled",)),
        ),
    ],
)
def test_store_sqlite_numbered_parameters_bind_in_placeholder_order(
    sql: str, args: tuple[object, ...], expected: tuple[str, tuple[object, ...]]
) -> None:
    assert bind(sql, args) == expected


async def test_store_every_connection_is_wal_and_synchronous_full(store: SQLiteStore) -> None:
    connections = [store._writer, store._reader]
    assert all(db is not None for db in connections)
    for db in connections:
        assert db is not None
        cur = await db.execute("PRAGMA journal_mode")
        assert (await cur.fetchone()) == ("wal",)
        cur = await db.execute("PRAGMA synchronous")
        assert (await cur.fetchone()) == (2,)  # FULL


async def test_store_file_is_in_wal_mode_for_other_connections(store: SQLiteStore) -> None:
    async with aiosqlite.connect(store.path) as db:
        cur = await db.execute("PRAGMA journal_mode")
        assert (await cur.fetchone()) == ("wal",)


# --- audit in the same transaction ------------------------------------------------
async def test_store_create_writes_its_audit_record(store: SQLiteStore) -> None:
    services, actor = await services_for(store)
    before = await audit_count(store)
    issued = await services.keys.create(actor, {"name": "ci", "groups": ["default"]})
    page = await store.list_audit(500, None)
    assert len(page.items) == before + 1
    newest = page.items[0]
    assert (newest.action, newest.target_type, newest.target_id) == (
        "key.create",
        "key",
        issued.key.id,
    )
    assert newest.actor_username == "admin"


async def test_store_refused_change_writes_no_audit(store: SQLiteStore) -> None:
    services, actor = await services_for(store, max_keys_per_user=3)
    issued = await services.keys.create(actor, {"name": "ci", "groups": ["default"]})
    other = await services.keys.create(actor, {"groups": ["default"]})
    before = await audit_count(store)
    seq = await store.change_seq()
    with pytest.raises(Conflict):  # limit reached (and the name is taken)
        await services.keys.create(actor, {"name": "CI", "groups": ["default"]})
    with pytest.raises(Conflict):  # name taken
        await services.keys.update(actor, other.key.id, {"name": "Ci"})
    assert await audit_count(store) == before
    await services.keys.revoke(actor, issued.key.id)
    assert await audit_count(store) == before + 1
    with pytest.raises(KeyRevoked):  # revocation is final
        await store.update_key(issued.key.id, {"name": "x"}, audit=audit_for(issued.key.id))
    assert await audit_count(store) == before + 1
    assert [(c.kind, c.ref) for c in await store.changes_since(seq)] == [("key", issued.key.id)]


class FailingAuditStore(SQLiteStore):
    """A real store whose audit insert fails: the change must roll back with it."""

    async def _audit(self, conn: Conn, entry: AuditEntry) -> None:
        raise sqlite3.OperationalError("disk I/O error")


async def test_store_failing_audit_rolls_back_the_change(tmp_path: Path) -> None:
    store = FailingAuditStore(tmp_path / "f.db")
    await store.open()
    try:
        owner = await add_user(store, "alice")
        seq = await store.change_seq()
        with pytest.raises(sqlite3.OperationalError):
            await store.create_key(
                key_record(owner, "cccccccccccc", "c"),
                b"c" * 32,
                max_keys=10,
                audit=audit_for("c"),
            )
        assert await store.get_key("cccccccccccc") is None
        assert await store.changes_since(seq) == []
        # The writer connection is usable again: nothing was left half-open.
        await store.touch_last_used({"cccccccccccc": 1.0})
    finally:
        await store.close()


# --- cancellation ------------------------------------------------------------------
async def _outcome(task: asyncio.Task[object]) -> str:
    try:
        await task
    except asyncio.CancelledError:
        return "cancelled"
    return "done"


async def test_store_cancelled_write_at_any_point_leaves_store_writable(
    store: SQLiteStore,
) -> None:
    # aiosqlite statements run on a thread and finish even when their awaiting
    # task is cancelled; a transaction cut in half must not leave the writer
    # inside BEGIN (holding the write lock) nor swallow the cancellation.
    owner = await add_user(store, "alice")
    other = SQLiteStore(store.path)
    await other.open()
    try:
        for steps in range(40):
            key_id = f"{steps:012d}"
            task = asyncio.create_task(
                store.create_key(
                    key_record(owner, key_id, key_id), key_id.encode() * 3, max_keys=100,
                    audit=audit_for(key_id),
                )
            )  # fmt: skip
            for _ in range(steps):
                await asyncio.sleep(0)  # walk the cancellation across every await
            task.cancel()
            assert await _outcome(task) in ("cancelled", "done")
            await store.touch_last_used({key_id: 1.0})  # this connection writes
            await other.touch_last_used({key_id: 2.0})  # and so does another
            created = await store.get_key(key_id) is not None
            audited = any(a.target_id == key_id for a in (await store.list_audit(500, None)).items)
            assert created == audited  # all of the transaction or none of it
    finally:
        await other.close()


def _niceness_of_threads() -> dict[int, int]:
    """This process's threads (native ids) and their niceness, as Linux reports them."""
    out = {}
    for stat in Path(f"/proc/{os.getpid()}/task").glob("*/stat"):
        fields = stat.read_text().rpartition(")")[2].split()
        out[int(stat.parent.name)] = int(fields[16])  # field 19 of proc(5): nice
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness per thread is Linux's")
async def test_store_writer_thread_yields_the_core_to_the_event_loop(tmp_path: Path) -> None:
    """The writer's thread (stamps, counts, admin writes) runs 10 nicer than the
    loop, so a burst of writes on the worker's core waits for the loop, not
    the other way round (docs/architecture.md#pauses); the readers do not."""
    before = _niceness_of_threads()
    store = SQLiteStore(tmp_path / "kg.db")
    await store.open()
    try:
        added = {tid: nice for tid, nice in _niceness_of_threads().items() if tid not in before}
        base = os.getpriority(os.PRIO_PROCESS, 0)
        # Two aiosqlite threads: the writer at base + 10, the reader at base.
        assert sorted(added.values()) == sorted([base, min(base + 10, 19)])
        await store.touch_last_used({"nosuchkey000": 1.0})  # the writer still writes
    finally:
        await store.close()
