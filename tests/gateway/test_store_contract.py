"""One contract for every Store: the SQLite and PostgreSQL stores must behave alike."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keygate.gateway.errors import Forbidden, NotFound
from keygate.gateway.store.base import Store
from keygate.gateway.store.errors import GroupInUse, KeyLimitReached, KeyRevoked, UniqueViolation
from keygate.gateway.store.postgres.store import PostgresStore
from keygate.gateway.store.records import (
    AuditEntry,
    GroupRecord,
    ImportedPage,
    KeyAuth,
    KeyQuery,
    KeyRecord,
    UserRecord,
    utcnow,
)
from keygate.gateway.store.sqlite.store import SQLiteStore
from tests.support.pg import reset_schema

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """None for SQLite; the PostgreSQL session database (skips only if no server)."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_database"))
    return None


@pytest.fixture
async def store(store_url: str | None, tmp_path: Path) -> AsyncIterator[Store]:
    st: Store
    if store_url is None:
        st = SQLiteStore(tmp_path / "contract.db")
    else:
        await reset_schema(store_url)
        st = PostgresStore(store_url, pool_size=10)
    await st.open()
    try:
        yield st
    finally:
        await st.close()


# --- builders ---------------------------------------------------------------
def new_id() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(12))


def new_digest() -> bytes:
    return hashlib.sha256(secrets.token_bytes(32)).digest()


def audit(action: str, target_type: str = "key", target_id: str = "x") -> AuditEntry:
    return AuditEntry(
        action=action,
        target_type=target_type,
        target_id=target_id,
        actor_user_id="u-root",
        actor_username="root",
        actor_key_id="rootkey00000",
        client_addr="192.0.2.1",
        changes={"note": action},
    )


async def make_user(
    store: Store, username: str, role: str = "member", groups: tuple[str, ...] = ()
) -> UserRecord:
    now = utcnow()
    user = UserRecord(
        id=f"u-{new_id()}",
        username=username,
        role=role,
        groups=groups,
        status="active",
        created_at=now,
        updated_at=now,
    )
    return await store.create_user(user, audit=audit("user.create", "user", user.id))


async def make_key(
    store: Store,
    owner: UserRecord,
    name: str | None = None,
    *,
    groups: tuple[str, ...] = ("default",),
    description: str = "",
    expires_at: datetime | None = None,
    max_keys: int = 100,
    digest: bytes | None = None,
    **extra: Any,
) -> KeyRecord:
    key_id = new_id()
    now = utcnow()
    key = KeyRecord(
        id=key_id,
        prefix="kg",
        last4="ab12",
        name=name or f"key-{key_id}",
        description=description,
        status="active",
        groups=groups,
        owner_id=owner.id,
        owner_username=owner.username,
        created_by_id=owner.id,
        created_by_username=owner.username,
        created_at=now,
        updated_at=now,
        last_used_at=None,
        expires_at=expires_at,
        webhook_url=extra.pop("webhook_url", None),
        metadata=extra.pop("metadata", {}),
    )
    return await store.create_key(
        key, digest or new_digest(), max_keys=max_keys, audit=audit("key.create", "key", key_id)
    )


def close_in_time(a: datetime | None, b: datetime | None) -> bool:
    assert a is not None and b is not None
    return abs((a - b).total_seconds()) < 0.001


async def audit_count(store: Store) -> int:
    return len((await store.list_audit(10_000, None)).items)


# --- lifecycle ----------------------------------------------------------------
async def test_open_builtin_groups_seeded(store: Store) -> None:
    groups = {g.name: g for g in await store.list_groups()}
    assert sorted(groups) == ["admin", "default", "self-service"]
    assert all(g.builtin for g in groups.values())
    assert groups["default"].rules == ({"route": "*", "methods": ["*"], "paths": ["/**"]},)
    assert groups["admin"].rules == ()


async def test_migrate_after_open_applies_nothing(store: Store) -> None:
    assert store.applied_on_open == tuple(v for v, _ in type(store).schema.steps)
    assert await store.migrate() == []


async def test_ping_open_store_answers(store: Store) -> None:
    await store.ping()


# --- keys: create and read ------------------------------------------------------
async def test_key_create_get_round_trips_every_field(store: Store) -> None:
    alice = await make_user(store, "alice")
    expires = utcnow() + timedelta(days=3)
    created = await make_key(
        store,
        alice,
        "billing-sync",
        groups=("default", "self-service"),
        description="syncs billing",
        expires_at=expires,
        webhook_url="https://hooks.example/x",
        metadata={"team": "billing", "n": 3, "nested": {"a": [1, 2]}},
    )
    got = await store.get_key(created.id)
    assert got == created
    assert got.name == "billing-sync"
    assert got.groups == ("default", "self-service")
    assert got.owner_id == alice.id and got.owner_username == "alice"
    assert got.created_by_id == alice.id
    assert got.metadata == {"team": "billing", "n": 3, "nested": {"a": [1, 2]}}
    assert got.webhook_url == "https://hooks.example/x"
    assert close_in_time(got.expires_at, expires)
    assert got.expires_at is not None and got.expires_at.tzinfo is not None
    assert got.created_at.tzinfo is not None
    assert got.last_used_at is None
    assert got.seq > 0
    assert got.display == f"kg_{got.id}_…ab12"
    assert await store.get_key("nosuchkey000") is None


async def test_key_create_same_name_other_case_name_taken(store: Store) -> None:
    alice = await make_user(store, "alice")
    bob = await make_user(store, "bob")
    await make_key(store, alice, "Deploy")
    with pytest.raises(UniqueViolation) as err:
        await make_key(store, alice, "deploy")
    assert err.value.what == "key_name"
    await make_key(store, bob, "deploy")  # unique per owner only


async def test_key_create_concurrent_past_limit_exactly_max_succeed(store: Store) -> None:
    alice = await make_user(store, "alice")
    results = await asyncio.gather(
        *(make_key(store, alice, max_keys=5) for _ in range(20)), return_exceptions=True
    )
    created = [r for r in results if isinstance(r, KeyRecord)]
    refused = [r for r in results if isinstance(r, KeyLimitReached)]
    assert len(created) == 5
    assert len(refused) == 15
    assert {r.limit for r in refused} == {5}
    page = await store.list_keys(KeyQuery(owner_id=alice.id, limit=100))
    assert len(page.items) == 5


async def test_key_create_revoked_keys_do_not_count(store: Store) -> None:
    alice = await make_user(store, "alice")
    first = await make_key(store, alice, max_keys=2)
    await make_key(store, alice, max_keys=2)
    with pytest.raises(KeyLimitReached) as err:
        await make_key(store, alice, max_keys=2)
    assert err.value.limit == 2
    await store.update_key(first.id, {"status": "revoked"}, audit=audit("key.revoke"))
    await make_key(store, alice, max_keys=2)


async def test_auth_lookup_current_digest_returns_key_and_owner(store: Store) -> None:
    alice = await make_user(store, "alice", groups=("default",))
    digest = new_digest()
    expires = utcnow() + timedelta(hours=1)
    key = await make_key(store, alice, "k", digest=digest, expires_at=expires)
    rec = await store.auth_lookup(digest)
    assert rec is not None
    assert (rec.key_id, rec.key_name, rec.key_status) == (key.id, "k", "active")
    assert rec.key_groups == ("default",)
    assert rec.expires_at is not None and abs(rec.expires_at - expires.timestamp()) < 0.001
    assert (rec.owner_id, rec.owner_username, rec.owner_role) == (alice.id, "alice", "member")
    assert (rec.owner_status, rec.owner_groups, rec.grace_until) == ("active", ("default",), None)
    assert await store.auth_lookup(new_digest()) is None


async def agrees_with_auth_lookup(store: Store, key_id: str, issued: list[bytes]) -> set[bytes]:
    """auth_lookup_key(key_id, d) gives auth_lookup(d)'s record for every digest
    ever issued to the key (and for an unknown one), and its digest set is
    exactly the digests auth_lookup still finds. Returns that set."""
    known = {d for d in issued if await store.auth_lookup(d) is not None}
    for digest in [*issued, new_digest()]:
        found = await store.auth_lookup_key(key_id, digest)
        assert found.record == await store.auth_lookup(digest)
        assert found.digests == known
    return known


async def test_auth_lookup_key_agrees_with_auth_lookup_through_rolls(store: Store) -> None:
    alice = await make_user(store, "alice", groups=("default",))
    issued = [new_digest()]
    key = await make_key(store, alice, digest=issued[0])
    assert await agrees_with_auth_lookup(store, key.id, issued) == {issued[0]}
    until = utcnow() + timedelta(minutes=5)
    # Roll with a grace: the old digest stays known, carrying its grace_until.
    issued.append(new_digest())
    await store.roll_key(key.id, issued[1], "1111", grace_until=until, audit=audit("key.roll"))
    assert await agrees_with_auth_lookup(store, key.id, issued) == set(issued[:2])
    graced = (await store.auth_lookup_key(key.id, issued[0])).record
    assert graced is not None and graced.grace_until is not None
    current = (await store.auth_lookup_key(key.id, issued[1])).record
    assert current is not None and current.grace_until is None
    # A second roll ends the first grace; a roll without grace keeps one digest.
    issued.append(new_digest())
    await store.roll_key(key.id, issued[2], "2222", grace_until=until, audit=audit("key.roll"))
    assert await agrees_with_auth_lookup(store, key.id, issued) == set(issued[1:3])
    issued.append(new_digest())
    await store.roll_key(key.id, issued[3], "3333", grace_until=None, audit=audit("key.roll"))
    assert await agrees_with_auth_lookup(store, key.id, issued) == {issued[3]}


async def test_auth_lookup_key_agrees_through_disable_revoke_delete(store: Store) -> None:
    alice = await make_user(store, "alice", groups=("default",))
    issued = [new_digest(), new_digest()]
    key = await make_key(store, alice, digest=issued[0])
    until = utcnow() + timedelta(minutes=5)
    await store.roll_key(key.id, issued[1], "1111", grace_until=until, audit=audit("key.roll"))
    # Status never changes which digests a key has; the record carries it.
    await store.update_key(key.id, {"status": "disabled"}, audit=audit("key.disable"))
    assert await agrees_with_auth_lookup(store, key.id, issued) == set(issued)
    disabled = (await store.auth_lookup_key(key.id, issued[1])).record
    assert disabled is not None and disabled.key_status == "disabled"
    # Revoking drops the grace digest; the revoked current one is still found.
    await store.update_key(key.id, {"status": "revoked"}, audit=audit("key.revoke"))
    assert await agrees_with_auth_lookup(store, key.id, issued) == {issued[1]}
    other_digest = new_digest()
    other = await make_key(store, alice, digest=other_digest)
    await store.delete_key(other.id, audit=audit("key.delete"))
    assert await agrees_with_auth_lookup(store, other.id, [other_digest]) == set()
    assert await store.auth_lookup_key(new_id(), other_digest) == KeyAuth(None, frozenset())


async def test_auth_lookup_key_owner_deleted_keys_revoked_without_grace(store: Store) -> None:
    alice = await make_user(store, "alice", groups=("default",))
    issued = [new_digest(), new_digest()]
    key = await make_key(store, alice, digest=issued[0])
    until = utcnow() + timedelta(minutes=5)
    await store.roll_key(key.id, issued[1], "1111", grace_until=until, audit=audit("key.roll"))
    await store.delete_user("alice", audit=audit("user.delete", "user", alice.id))
    assert await agrees_with_auth_lookup(store, key.id, issued) == {issued[1]}
    record = (await store.auth_lookup_key(key.id, issued[1])).record
    assert record is not None and record.owner_username is None
    assert record.key_status == "revoked"


async def test_key_ids_not_revoked_only(store: Store) -> None:
    alice = await make_user(store, "alice")
    live = await make_key(store, alice)
    dead = await make_key(store, alice)
    await store.update_key(dead.id, {"status": "revoked"}, audit=audit("key.revoke"))
    assert await store.key_ids() == [live.id]


# --- keys: listing ----------------------------------------------------------------
async def test_list_keys_search_name_description_id_case_insensitive(store: Store) -> None:
    alice = await make_user(store, "alice")
    a = await make_key(store, alice, "Billing-Sync")
    b = await make_key(store, alice, "other", description="Feeds the BILLING report")
    c = await make_key(store, alice, "100%_done")
    await make_key(store, alice, "unrelated")

    async def ids(search: str) -> set[str]:
        return {k.id for k in (await store.list_keys(KeyQuery(search=search))).items}

    assert await ids("billing") == {a.id, b.id}
    assert await ids(a.id[2:9].upper()) == {a.id}
    # LIKE wildcards in the search text are literal characters.
    assert await ids("0%_d") == {c.id}
    assert await ids("%") == {c.id}
    assert await ids("_") == {c.id}


async def test_list_keys_search_folds_non_ascii_case_on_every_store(store: Store) -> None:
    alice = await make_user(store, "alice")
    key = await make_key(store, alice, "ÄPFEL-Ölmühle")
    found = (await store.list_keys(KeyQuery(search="äpfel-öl"))).items
    assert [k.id for k in found] == [key.id]


async def test_list_keys_status_filter_computes_expired(store: Store) -> None:
    alice = await make_user(store, "alice")
    active = await make_key(store, alice, expires_at=utcnow() + timedelta(days=1))
    forever = await make_key(store, alice)
    expired = await make_key(store, alice, expires_at=utcnow() - timedelta(seconds=1))
    disabled = await make_key(store, alice)
    revoked = await make_key(store, alice)
    await store.update_key(disabled.id, {"status": "disabled"}, audit=audit("key.update"))
    await store.update_key(revoked.id, {"status": "revoked"}, audit=audit("key.revoke"))

    async def ids(status: str) -> set[str]:
        return {k.id for k in (await store.list_keys(KeyQuery(status=status))).items}

    assert await ids("active") == {active.id, forever.id}
    assert await ids("expired") == {expired.id}
    assert await ids("disabled") == {disabled.id}
    assert await ids("revoked") == {revoked.id}
    got = await store.get_key(expired.id)
    assert got is not None and got.effective_status() == "expired"


async def test_list_keys_owner_and_group_filters(store: Store) -> None:
    alice = await make_user(store, "alice")
    bob = await make_user(store, "bob")
    a1 = await make_key(store, alice, groups=("default", "ops"))
    a2 = await make_key(store, alice, groups=("default",))
    b1 = await make_key(store, bob, groups=("ops",))

    async def ids(**kw: Any) -> set[str]:
        return {k.id for k in (await store.list_keys(KeyQuery(**kw))).items}

    assert await ids(owner_id=alice.id) == {a1.id, a2.id}
    assert await ids(group="ops") == {a1.id, b1.id}
    assert await ids(group="op") == set()  # whole group names, not substrings
    assert await ids(owner_id=bob.id, group="default") == set()


async def test_list_keys_cursor_newest_first_insert_between_pages_no_repeat_no_skip(
    store: Store,
) -> None:
    alice = await make_user(store, "alice")
    made = [await make_key(store, alice) for _ in range(7)]
    expected = [k.id for k in reversed(made)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list_keys(KeyQuery(limit=3, before_seq=cursor))
        seen += [k.id for k in page.items]
        pages += 1
        await make_key(store, alice)  # a newer key appears between pages
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected
    assert pages == 3
    seqs = [k.seq for k in (await store.list_keys(KeyQuery(limit=100))).items]
    assert seqs == sorted(seqs, reverse=True)


async def test_list_keys_exact_page_no_cursor(store: Store) -> None:
    alice = await make_user(store, "alice")
    for _ in range(3):
        await make_key(store, alice)
    page = await store.list_keys(KeyQuery(limit=3))
    assert len(page.items) == 3 and page.next_cursor is None


# --- keys: change ---------------------------------------------------------------
async def test_update_key_writes_fields_and_updated_at(store: Store) -> None:
    alice = await make_user(store, "alice")
    key = await make_key(store, alice, "old")
    expires = utcnow() + timedelta(days=9)
    updated = await store.update_key(
        key.id,
        {
            "name": "New",
            "description": "d",
            "groups": ["self-service"],
            "expires_at": expires,
            "webhook_url": "https://h.example/",
            "metadata": {"k": "v"},
            "status": "disabled",
        },
        audit=audit("key.update"),
    )
    assert (updated.name, updated.description, updated.status) == ("New", "d", "disabled")
    assert updated.groups == ("self-service",)
    assert close_in_time(updated.expires_at, expires)
    assert (updated.webhook_url, updated.metadata) == ("https://h.example/", {"k": "v"})
    assert updated.updated_at >= key.updated_at
    assert updated == await store.get_key(key.id)
    cleared = await store.update_key(
        key.id, {"expires_at": None, "status": "active"}, audit=audit("key.update")
    )
    assert cleared.expires_at is None and cleared.status == "active"


async def test_update_key_rename_onto_other_key_name_taken(store: Store) -> None:
    alice = await make_user(store, "alice")
    await make_key(store, alice, "first")
    second = await make_key(store, alice, "second")
    with pytest.raises(UniqueViolation) as err:
        await store.update_key(second.id, {"name": "FIRST"}, audit=audit("key.update"))
    assert err.value.what == "key_name"
    same = await store.update_key(second.id, {"name": "SECOND"}, audit=audit("key.update"))
    assert same.name == "SECOND"


@pytest.mark.parametrize("field", ["owner_id", "digest", "seq", "created_at", "last_used_at"])
async def test_update_key_field_outside_allow_list_refused(store: Store, field: str) -> None:
    alice = await make_user(store, "alice")
    key = await make_key(store, alice)
    before = await audit_count(store)
    with pytest.raises(ValueError):
        await store.update_key(key.id, {field: "x"}, audit=audit("key.update"))
    assert await store.get_key(key.id) == key
    assert await audit_count(store) == before


async def test_update_key_block_fields_round_trip(store: Store) -> None:
    alice = await make_user(store, "alice")
    key = await make_key(store, alice, expires_at=utcnow() + timedelta(days=1))
    assert (key.disabled_by_id, key.disabled_by_username, key.disabled_by_admin) == (
        None,
        None,
        False,
    )
    assert key.expires_by_admin is False
    fields = {
        "status": "disabled",
        "disabled_by_id": None,
        "disabled_by_username": "cli:root",
        "disabled_by_admin": True,
        "expires_by_admin": True,
    }
    updated = await store.update_key(key.id, fields, audit=audit("key.disable"))
    assert (updated.disabled_by_id, updated.disabled_by_username) == (None, "cli:root")
    assert updated.disabled_by_admin is True and updated.expires_by_admin is True
    assert updated == await store.get_key(key.id)
    assert updated.as_json()["disabled_by"] == {"id": None, "username": "cli:root"}


async def test_update_key_check_sees_current_key_and_adds_fields(store: Store) -> None:
    alice = await make_user(store, "alice")
    key = await make_key(store, alice)
    await store.update_key(key.id, {"status": "disabled"}, audit=audit("key.disable"))
    seen: list[KeyRecord] = []

    def check(current: KeyRecord) -> dict[str, Any]:
        seen.append(current)
        return {"disabled_by_id": alice.id, "disabled_by_username": "alice"}

    updated = await store.update_key(
        key.id, {"description": "x"}, audit=audit("key.update"), check=check
    )
    assert [k.status for k in seen] == ["disabled"]
    assert (updated.description, updated.disabled_by_username) == ("x", "alice")


async def test_update_key_check_refusal_writes_nothing(store: Store) -> None:
    alice = await make_user(store, "alice")
    key = await make_key(store, alice)
    before = await audit_count(store)
    seq = await store.change_seq()

    def refuse(current: KeyRecord) -> dict[str, Any]:
        raise Forbidden("no")

    with pytest.raises(Forbidden):
        await store.update_key(key.id, {"name": "n"}, audit=audit("key.update"), check=refuse)
    assert await store.get_key(key.id) == key
    assert await audit_count(store) == before
    assert await store.change_seq() == seq


async def test_update_key_check_may_not_write_outside_allow_list(store: Store) -> None:
    alice = await make_user(store, "alice")
    key = await make_key(store, alice)
    with pytest.raises(ValueError):
        await store.update_key(
            key.id, {"name": "n"}, audit=audit("key.update"), check=lambda k: {"owner_id": "x"}
        )
    assert await store.get_key(key.id) == key


async def test_update_key_missing_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.update_key("nosuchkey000", {"name": "x"}, audit=audit("key.update"))


async def test_revoked_key_is_final(store: Store) -> None:
    alice = await make_user(store, "alice")
    key = await make_key(store, alice)
    revoked = await store.update_key(key.id, {"status": "revoked"}, audit=audit("key.revoke"))
    assert revoked.status == "revoked"
    for fields in ({"status": "active"}, {"name": "again"}, {"status": "revoked"}):
        with pytest.raises(KeyRevoked):
            await store.update_key(key.id, fields, audit=audit("key.update"))
    with pytest.raises(KeyRevoked):
        await store.roll_key(key.id, new_digest(), "zz99", grace_until=None, audit=audit("r"))


# --- keys: roll and delete -------------------------------------------------------
async def test_roll_without_grace_old_digest_stops_at_once(store: Store) -> None:
    alice = await make_user(store, "alice")
    old, new = new_digest(), new_digest()
    key = await make_key(store, alice, digest=old)
    rolled = await store.roll_key(key.id, new, "Zz99", grace_until=None, audit=audit("key.roll"))
    assert rolled.id == key.id and rolled.last4 == "Zz99" and rolled.seq == key.seq
    assert await store.auth_lookup(old) is None
    rec = await store.auth_lookup(new)
    assert rec is not None and rec.key_id == key.id and rec.grace_until is None


async def test_roll_with_grace_old_digest_carries_grace_until(store: Store) -> None:
    alice = await make_user(store, "alice")
    first, second, third = new_digest(), new_digest(), new_digest()
    key = await make_key(store, alice, digest=first)
    until = utcnow() + timedelta(minutes=5)
    await store.roll_key(key.id, second, "2222", grace_until=until, audit=audit("key.roll"))
    rec = await store.auth_lookup(first)
    assert rec is not None and rec.key_id == key.id
    assert rec.grace_until is not None and abs(rec.grace_until - until.timestamp()) < 0.001
    current = await store.auth_lookup(second)
    assert current is not None and current.grace_until is None
    # A second roll ends the first grace: only the token being replaced keeps one.
    await store.roll_key(key.id, third, "3333", grace_until=until, audit=audit("key.roll"))
    assert await store.auth_lookup(first) is None
    rec = await store.auth_lookup(second)
    assert rec is not None and rec.grace_until is not None


async def test_roll_with_past_grace_keeps_no_old_digest(store: Store) -> None:
    alice = await make_user(store, "alice")
    old = new_digest()
    key = await make_key(store, alice, digest=old)
    past = utcnow() - timedelta(seconds=1)
    await store.roll_key(key.id, new_digest(), "4444", grace_until=past, audit=audit("key.roll"))
    assert await store.auth_lookup(old) is None


async def test_roll_missing_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.roll_key("nosuchkey000", new_digest(), "x", grace_until=None, audit=audit("r"))


async def test_revoke_ends_grace_of_rolled_token(store: Store) -> None:
    alice = await make_user(store, "alice")
    old = new_digest()
    key = await make_key(store, alice, digest=old)
    until = utcnow() + timedelta(minutes=5)
    await store.roll_key(key.id, new_digest(), "5555", grace_until=until, audit=audit("r"))
    await store.update_key(key.id, {"status": "revoked"}, audit=audit("key.revoke"))
    assert await store.auth_lookup(old) is None


async def test_delete_key_removes_record_and_digests(store: Store) -> None:
    alice = await make_user(store, "alice")
    old, new = new_digest(), new_digest()
    key = await make_key(store, alice, digest=old)
    until = utcnow() + timedelta(minutes=5)
    await store.roll_key(key.id, new, "6666", grace_until=until, audit=audit("key.roll"))
    await store.delete_key(key.id, audit=audit("key.delete"))
    assert await store.get_key(key.id) is None
    assert await store.auth_lookup(old) is None
    assert await store.auth_lookup(new) is None
    with pytest.raises(NotFound):
        await store.delete_key(key.id, audit=audit("key.delete"))


# --- users ----------------------------------------------------------------------
async def test_user_create_get_and_username_taken(store: Store) -> None:
    alice = await make_user(store, "alice", groups=("default",))
    assert await store.get_user("alice") == alice
    assert await store.get_user_by_id(alice.id) == alice
    assert await store.get_user("nobody") is None
    assert await store.get_user_by_id("u-nobody") is None
    with pytest.raises(UniqueViolation) as err:
        await make_user(store, "alice")
    assert err.value.what == "username"


async def test_list_users_by_username_pages(store: Store) -> None:
    for name in ["carol", "Bob", "alice", "dave", "a_b", "a-b"]:
        await make_user(store, name)
    names: list[str] = []
    after: str | None = None
    while True:
        page = await store.list_users(2, after)
        names += [u.username for u in page.items]
        if page.next_cursor is None:
            break
        after = str(page.next_cursor)  # a username (Page types its cursor as int)
    # Byte order, the same on every store whatever the database locale.
    assert names == sorted(["carol", "Bob", "alice", "dave", "a_b", "a-b"])


async def test_update_user_fields(store: Store) -> None:
    alice = await make_user(store, "alice")
    updated = await store.update_user(
        "alice",
        {"role": "admin", "groups": ["default", "self-service"], "status": "disabled"},
        audit=audit("user.update", "user", alice.id),
    )
    assert (updated.role, updated.status) == ("admin", "disabled")
    assert updated.groups == ("default", "self-service")
    assert updated.id == alice.id and updated.created_at == alice.created_at
    assert updated == await store.get_user("alice")
    with pytest.raises(ValueError):
        await store.update_user("alice", {"username": "x"}, audit=audit("user.update"))
    with pytest.raises(NotFound):
        await store.update_user("nobody", {"role": "admin"}, audit=audit("user.update"))


async def test_count_admins_active_admins_only(store: Store) -> None:
    assert await store.count_admins() == 0
    await make_user(store, "root", role="admin")
    await make_user(store, "ops", role="admin")
    await make_user(store, "alice")
    assert await store.count_admins() == 2
    await store.update_user("ops", {"status": "disabled"}, audit=audit("user.update"))
    assert await store.count_admins() == 1


async def test_delete_user_revokes_their_keys(store: Store) -> None:
    alice = await make_user(store, "alice")
    bob = await make_user(store, "bob")
    digest = new_digest()
    k1 = await make_key(store, alice, digest=digest)
    k2 = await make_key(store, alice)
    already = await make_key(store, alice)
    await store.update_key(already.id, {"status": "revoked"}, audit=audit("key.revoke"))
    kb = await make_key(store, bob)
    revoked = await store.delete_user("alice", audit=audit("user.delete", "user", alice.id))
    assert sorted(revoked) == sorted([k1.id, k2.id])
    assert await store.get_user("alice") is None
    for key_id in (k1.id, k2.id):
        got = await store.get_key(key_id)
        assert got is not None and got.status == "revoked"
    other = await store.get_key(kb.id)
    assert other is not None and other.status == "active"
    rec = await store.auth_lookup(digest)
    assert rec is not None and rec.owner_username is None and rec.owner_groups == ()
    with pytest.raises(NotFound):
        await store.delete_user("alice", audit=audit("user.delete"))


# --- groups ---------------------------------------------------------------------
def make_group(name: str, rules: tuple[dict[str, Any], ...] = ()) -> GroupRecord:
    now = utcnow()
    return GroupRecord(
        name=name,
        description=f"{name} group",
        rules=rules,
        builtin=False,
        created_at=now,
        updated_at=now,
    )


RULE = {"route": "billing", "methods": ["GET", "HEAD"], "paths": ["/billing/invoices/**"]}


async def test_group_create_get_update(store: Store) -> None:
    created = await store.create_group(make_group("billing-read", (RULE,)), audit=audit("g"))
    got = await store.get_group("billing-read")
    assert got is not None
    assert (got.name, got.description, got.rules, got.builtin) == (
        "billing-read",
        "billing-read group",
        (RULE,),
        False,
    )
    assert close_in_time(got.created_at, created.created_at)
    assert "billing-read" in [g.name for g in await store.list_groups()]
    updated = await store.update_group(
        "billing-read", {"description": "new", "rules": [RULE, RULE]}, audit=audit("g")
    )
    assert (updated.description, updated.rules) == ("new", (RULE, RULE))
    assert await store.get_group("nope") is None
    with pytest.raises(UniqueViolation) as err:
        await store.create_group(make_group("billing-read"), audit=audit("g"))
    assert err.value.what == "group_name"


async def test_update_group_builtin_or_missing_not_found(store: Store) -> None:
    for name in ("admin", "default", "nope"):
        with pytest.raises(NotFound):
            await store.update_group(name, {"description": "x"}, audit=audit("g"))
    with pytest.raises(ValueError):
        await store.update_group("admin", {"builtin": False}, audit=audit("g"))


async def test_delete_group_unused_removed(store: Store) -> None:
    await store.create_group(make_group("ops"), audit=audit("g"))
    await store.delete_group("ops", force=False, audit=audit("group.delete"))
    assert await store.get_group("ops") is None
    with pytest.raises(NotFound):
        await store.delete_group("ops", force=False, audit=audit("group.delete"))


@pytest.mark.parametrize("holder", ["user", "key"])
async def test_delete_group_in_use_refused(store: Store, holder: str) -> None:
    await store.create_group(make_group("ops"), audit=audit("g"))
    alice = await make_user(store, "alice", groups=("ops",) if holder == "user" else ())
    if holder == "key":
        await make_key(store, alice, groups=("ops",))
    before = await audit_count(store)
    with pytest.raises(GroupInUse):
        await store.delete_group("ops", force=False, audit=audit("group.delete"))
    assert await store.get_group("ops") is not None
    assert await audit_count(store) == before


async def test_delete_group_force_removes_it_from_users_and_keys(store: Store) -> None:
    await store.create_group(make_group("ops"), audit=audit("g"))
    alice = await make_user(store, "alice", groups=("default", "ops", "self-service"))
    bob = await make_user(store, "bob", groups=("default",))
    key = await make_key(store, alice, groups=("ops", "default"))
    untouched = await make_key(store, bob, groups=("default",))
    seq = await store.change_seq()
    await store.delete_group("ops", force=True, audit=audit("group.delete", "group", "ops"))
    assert await store.get_group("ops") is None
    user = await store.get_user("alice")
    assert user is not None and user.groups == ("default", "self-service")
    got = await store.get_key(key.id)
    assert got is not None and got.groups == ("default",)
    assert await store.get_key(untouched.id) == untouched
    assert await store.get_user("bob") == bob
    changes = [(c.kind, c.ref) for c in await store.changes_since(seq)]
    assert changes == [("user", alice.id), ("key", key.id), ("group", "ops")]


# --- audit --------------------------------------------------------------------
async def test_every_write_appends_exactly_one_audit_record(store: Store) -> None:
    alice = await make_user(store, "alice")
    key = await make_key(store, alice)

    async def write(action: str, call: Any) -> None:
        before = await store.list_audit(10_000, None)
        await call
        after = await store.list_audit(10_000, None)
        assert len(after.items) == len(before.items) + 1, action
        assert after.items[0].action == action

    await write("key.create", make_key(store, alice))
    await write("key.update", store.update_key(key.id, {"name": "n"}, audit=audit("key.update")))
    await write(
        "key.roll",
        store.roll_key(key.id, new_digest(), "7777", grace_until=None, audit=audit("key.roll")),
    )
    await write("key.delete", store.delete_key(key.id, audit=audit("key.delete")))
    await write("user.create", make_user(store, "bob"))
    await write(
        "user.update", store.update_user("bob", {"role": "admin"}, audit=audit("user.update"))
    )
    await write("user.delete", store.delete_user("bob", audit=audit("user.delete")))
    await write("group.create", store.create_group(make_group("g1"), audit=audit("group.create")))
    await write(
        "group.update", store.update_group("g1", {"description": "x"}, audit=audit("group.update"))
    )
    await write("group.delete", store.delete_group("g1", force=True, audit=audit("group.delete")))


async def test_create_user_without_audit_writes_none(store: Store) -> None:
    now = utcnow()
    user = UserRecord("u-boot", "boot", "admin", (), "active", now, now)
    await store.create_user(user, audit=None)
    assert await audit_count(store) == 0
    assert [c.ref for c in await store.changes_since(0)] == ["u-boot"]


async def test_list_audit_newest_first_pages_and_fields(store: Store) -> None:
    for i in range(5):
        await store.create_group(make_group(f"g{i}"), audit=audit(f"a{i}", "group", f"g{i}"))
    first = await store.list_audit(2, None)
    assert [r.action for r in first.items] == ["a4", "a3"]
    assert first.next_cursor == first.items[-1].id
    second = await store.list_audit(2, first.next_cursor)
    assert [r.action for r in second.items] == ["a2", "a1"]
    third = await store.list_audit(2, second.next_cursor)
    assert [r.action for r in third.items] == ["a0"] and third.next_cursor is None
    rec = third.items[0]
    assert (rec.target_type, rec.target_id) == ("group", "g0")
    assert (rec.actor_user_id, rec.actor_username, rec.actor_key_id) == (
        "u-root",
        "root",
        "rootkey00000",
    )
    assert rec.client_addr == "192.0.2.1" and rec.changes == {"note": "a0"}
    assert rec.at.tzinfo is not None and abs((utcnow() - rec.at).total_seconds()) < 60


# --- usage and changes -----------------------------------------------------------
async def test_touch_last_used_never_moves_back(store: Store) -> None:
    alice = await make_user(store, "alice")
    k1 = await make_key(store, alice)
    k2 = await make_key(store, alice)
    t = utcnow().timestamp()
    await store.touch_last_used({})
    await store.touch_last_used({k1.id: t, k2.id: t - 100, "nosuchkey000": t})
    await store.touch_last_used({k1.id: t - 50, k2.id: t - 10})

    async def stamp(key_id: str) -> float:
        got = await store.get_key(key_id)
        assert got is not None and got.last_used_at is not None
        return got.last_used_at.timestamp()

    assert abs(await stamp(k1.id) - t) < 0.001
    assert abs(await stamp(k2.id) - (t - 10)) < 0.001


async def test_touch_last_used_leaves_a_stamp_newer_than_the_resolution(store: Store) -> None:
    """auth.last_used_resolution: a row is rewritten at most once per resolution,
    whichever node sends the stamp."""
    alice = await make_user(store, "alice")
    k = await make_key(store, alice)
    t = utcnow().timestamp()

    async def stamp() -> float:
        got = await store.get_key(k.id)
        assert got is not None and got.last_used_at is not None
        return got.last_used_at.timestamp()

    await store.touch_last_used({k.id: t}, 60.0)  # none stored: written
    assert abs(await stamp() - t) < 0.001
    await store.touch_last_used({k.id: t + 59}, 60.0)  # another node, 59 s later: left alone
    assert abs(await stamp() - t) < 0.001
    await store.touch_last_used({k.id: t + 61}, 60.0)  # a resolution later: written
    assert abs(await stamp() - (t + 61)) < 0.001
    await store.touch_last_used({k.id: t + 62})  # resolution 0: every newer stamp
    assert abs(await stamp() - (t + 62)) < 0.001


async def test_touch_last_used_concurrent_batches_keep_newest(store: Store) -> None:
    alice = await make_user(store, "alice")
    keys = [await make_key(store, alice) for _ in range(5)]
    t = utcnow().timestamp()
    batches = [{k.id: t + i for k in keys} for i in range(10)]
    await asyncio.gather(*(store.touch_last_used(b) for b in reversed(batches)))
    for k in keys:
        got = await store.get_key(k.id)
        assert got is not None and got.last_used_at is not None
        assert abs(got.last_used_at.timestamp() - (t + 9)) < 0.001


async def test_changes_since_in_order_per_write(store: Store) -> None:
    assert await store.change_seq() == 0
    assert await store.changes_since(0) == []
    alice = await make_user(store, "alice")
    k1 = await make_key(store, alice)
    k2 = await make_key(store, alice)
    mid = await store.change_seq()
    await store.update_key(k1.id, {"status": "disabled"}, audit=audit("key.update"))
    await store.delete_user("alice", audit=audit("user.delete"))
    every = await store.changes_since(0)
    assert [(c.kind, c.ref) for c in every[:5]] == [
        ("user", alice.id),
        ("key-created", k1.id),
        ("key-created", k2.id),
        ("key", k1.id),
        ("user", alice.id),  # delete_user: the user first, then each revoked key
    ]
    assert sorted((c.kind, c.ref) for c in every[5:]) == sorted([("key", k1.id), ("key", k2.id)])
    seqs = [c.seq for c in every]
    assert seqs == sorted(set(seqs))
    assert await store.change_seq() == seqs[-1]
    later = await store.changes_since(mid)
    assert [c.seq for c in later] == [s for s in seqs if s > mid]
    assert await store.changes_since(seqs[-1]) == []


# --- imported keys (docs/reference.md#imported-keys) -----------------------------------
def imported_key(owner: UserRecord, name: str, token: str) -> tuple[KeyRecord, bytes]:
    now = utcnow()
    key = KeyRecord(
        id=new_id(),
        prefix=token[:4] if len(token) >= 32 else "",
        last4=token[-4:],
        name=name,
        description="",
        status="active",
        groups=("default",),
        owner_id=owner.id,
        owner_username=owner.username,
        created_by_id=None,
        created_by_username="cli:ops",
        created_at=now,
        updated_at=now,
        last_used_at=None,
        expires_at=None,
        webhook_url=None,
        metadata={"imported_from": "csv"},
        imported=True,
    )
    return key, hashlib.sha256(token.encode()).digest()


def import_audit(key: KeyRecord) -> AuditEntry:
    return audit("key.import", "key", key.id)


async def test_import_keys_writes_skips_held_and_announces_one_span(store: Store) -> None:
    alice = await make_user(store, "alice", groups=("default",))
    native = await make_key(store, alice)
    seq = await store.change_seq()
    batch = [imported_key(alice, f"legacy-{i}", f"legacy-token-{i:04d}-abcdef") for i in range(5)]
    outcome = await store.import_keys(batch, audit=import_audit)
    assert (len(outcome.imported), outcome.skipped) == (5, 0)
    assert [c.kind for c in await store.changes_since(seq)] == ["keys-imported"]
    # Again, with one new key: only that one is written.
    again = [*batch, imported_key(alice, "legacy-new", "legacy-token-9999-abcdef")]
    outcome = await store.import_keys(again, audit=import_audit)
    assert (len(outcome.imported), outcome.skipped) == (1, 5)
    read = await store.imported_keys(0)
    assert read.digests == [d for _, d in again]  # the native key's is not among them
    first, last = outcome.span.split(":") if outcome.span else ("", "")
    span = await store.imported_keys(int(first) - 1, int(last))
    assert (span.digests, span.last_seq) == ([again[-1][1]], int(last))
    # Paged by seq.
    page = await store.imported_keys(0, None, limit=2)
    assert page.digests == [d for _, d in again[:2]]
    assert (await store.imported_keys(page.last_seq, None, limit=2)).digests[0] == again[2][1]
    assert await store.imported_keys(int(last)) == ImportedPage([], 0)
    # An imported token carries no key id: only keygate keys' ids are listed.
    assert await store.key_ids() == [native.id]


async def test_import_keys_audit_record_per_key(store: Store) -> None:
    alice = await make_user(store, "alice", groups=("default",))
    before = await audit_count(store)
    batch = [imported_key(alice, f"a-{i}", f"audited-token-{i:04d}-xyz") for i in range(3)]
    await store.import_keys(batch, audit=import_audit)
    assert await audit_count(store) == before + 3
    page = await store.list_audit(10, None)
    assert {a.target_id for a in page.items if a.action == "key.import"} == {
        k.id for k, _ in batch
    }


async def test_import_keys_found_by_digest_and_read_back(store: Store) -> None:
    alice = await make_user(store, "alice", groups=("default",))
    token = "Z" * 40
    key, digest = imported_key(alice, "long", token)
    await store.import_keys([(key, digest)], audit=import_audit)
    found = await store.auth_lookup(digest)
    assert found is not None and found.key_id == key.id and found.owner_username == "alice"
    stored = await store.get_key(key.id)
    assert stored is not None and stored.imported
    assert stored.display == "ZZZZ…ZZZZ"
    assert await store.held_digests([digest, new_digest()]) == {digest}


async def test_import_keys_name_clash_writes_nothing(store: Store) -> None:
    alice = await make_user(store, "alice", groups=("default",))
    await make_key(store, alice, "Taken")
    batch = [
        imported_key(alice, "fresh", "clash-token-0001-abcdef"),
        imported_key(alice, "taken", "clash-token-0002-abcdef"),
    ]
    before = await audit_count(store)
    with pytest.raises(UniqueViolation) as refused:
        await store.import_keys(batch, audit=import_audit)
    assert refused.value.what == "key_name"
    assert await store.held_digests([d for _, d in batch]) == set()
    assert await audit_count(store) == before


async def test_import_keys_ignore_the_key_limit(store: Store) -> None:
    alice = await make_user(store, "alice", groups=("default",))
    batch = [imported_key(alice, f"n-{i}", f"limit-token-{i:04d}-abcdef") for i in range(4)]
    await store.import_keys(batch, audit=import_audit)
    assert await store.count_keys(alice.id) == 4
    assert await store.key_names(alice.id) == {f"n-{i}" for i in range(4)}
    with pytest.raises(KeyLimitReached):
        await make_key(store, alice, max_keys=4)


async def test_roll_imported_key_becomes_a_keygate_key(store: Store) -> None:
    alice = await make_user(store, "alice", groups=("default",))
    key, digest = imported_key(alice, "legacy", "short-legacy-token-1")
    await store.import_keys([(key, digest)], audit=import_audit)
    until = utcnow() + timedelta(hours=1)
    rolled = await store.roll_key(
        key.id, new_digest(), "Qq11", grace_until=until, audit=audit("key.roll"), prefix="kg"
    )
    assert not rolled.imported
    assert rolled.display == f"kg_{key.id}_…Qq11"
    # Its id now names keygate tokens: announced as a new key id is.
    assert key.id in await store.key_ids()
    assert ("key-created", key.id) in [(c.kind, c.ref) for c in await store.changes_since(0)]
    old = await store.auth_lookup(digest)  # the imported token, in its grace
    assert old is not None and old.grace_until is not None
