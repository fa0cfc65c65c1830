"""The key cache (docs/reference.md#the-proxy): bounded LRU, TTL, targeted eviction, fill race,
effective groups."""

from __future__ import annotations

import gc
import time
from typing import Any

import pytest

from keygate.gateway.auth.cache import KeyCache, Principal, effective_groups, principal_from
from keygate.gateway.auth.verify import check_status
from keygate.gateway.errors import Unauthorized
from keygate.gateway.store.records import AuthRecord
from tests.support.polling import wait_for


def record(
    key_id: str = "k1",
    *,
    owner: str = "u1",
    groups: tuple[str, ...] = ("default",),
    role: str | None = "member",
    owner_groups: tuple[str, ...] = ("default",),
    status: str = "active",
    owner_status: str | None = "active",
    username: str | None = "alice",
    name: str = "ci",
    expires_at: float | None = None,
) -> AuthRecord:
    return AuthRecord(
        key_id=key_id,
        key_name=name,
        key_status=status,
        key_groups=groups,
        expires_at=expires_at,
        owner_id=owner,
        owner_username=username,
        owner_role=role,
        owner_status=owner_status,
        owner_groups=owner_groups,
    )


def principal(key_id: str = "k1", ttl: float = 60, **fields: object) -> Principal:
    return principal_from(record(key_id, **fields), ttl)  # type: ignore[arg-type]


def digest(n: int) -> bytes:
    return n.to_bytes(32, "big")


def filled(*principals: Principal, size: int = 100) -> KeyCache:
    cache = KeyCache(size, 60, 5)
    for i, p in enumerate(principals):
        cache.put(digest(i), p, cache.generation)
    return cache


# --- effective groups ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("role", "key_groups", "owner_groups", "expected"),
    [
        ("member", ("default", "billing"), ("default", "billing"), ("billing", "default")),
        ("member", ("default", "billing"), ("billing",), ("billing",)),
        ("member", ("default",), (), ()),
        ("member", ("admin", "default"), ("admin", "default"), ("default",)),
        ("admin", ("admin", "billing"), (), ("admin", "billing")),
        (None, ("default",), (), ()),  # the owner no longer exists
    ],
)
def test_cache_effective_groups_are_key_groups_owner_may_hold(
    role: str | None,
    key_groups: tuple[str, ...],
    owner_groups: tuple[str, ...],
    expected: tuple[str, ...],
) -> None:
    rec = record(groups=key_groups, role=role, owner_groups=owner_groups)
    assert effective_groups(rec) == expected


def test_cache_principal_identity_headers() -> None:
    p = principal(groups=("b", "a"), owner_groups=("a", "b"))
    assert p.identity == {
        "X-Keygate-Key-Id": "k1",
        "X-Keygate-Key-Name": "ci",
        "X-Keygate-User": "alice",
        "X-Keygate-Groups": "a,b",
    }


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("plain name", "plain name"),
        ("café", "caf%C3%A9"),  # UTF-8 bytes (RFC 3986), not the code point
        ("caf%E9", "caf%25E9"),  # "%" itself encoded: never the same value as another name
        ("ačĊX-Evil: 1", "a%C4%8D%C4%8AX-Evil: 1"),
        ("a\r\nX-Evil: 1", "a%0D%0AX-Evil: 1"),
    ],
)
def test_cache_identity_header_values_are_safe(name: str, header: str) -> None:
    assert principal(name=name).identity["X-Keygate-Key-Name"] == header


# --- status rules ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({}, None),
        ({"status": "disabled"}, "key_disabled"),
        ({"status": "revoked"}, "invalid_api_key"),
        ({"expires_at": time.time() - 1}, "key_expired"),
        ({"expires_at": time.time() + 3600}, None),
        ({"owner_status": "disabled"}, "invalid_api_key"),
        ({"username": None, "owner_status": None, "role": None}, "invalid_api_key"),
        ({"status": "disabled", "owner_status": "disabled"}, "invalid_api_key"),
        ({"status": "revoked", "expires_at": time.time() - 1}, "invalid_api_key"),
    ],
)
def test_cache_check_status_follows_spec_order(fields: dict[str, Any], code: str | None) -> None:
    p = principal(**fields)
    if code is None:
        check_status(p, time.time())
        return
    with pytest.raises(Unauthorized) as info:
        check_status(p, time.time())
    assert info.value.code == code


# --- LRU, TTL, negative entries ------------------------------------------------------------
def test_cache_lru_is_bounded_and_unindexes_dropped_entries() -> None:
    cache = filled(*(principal(f"k{i}", owner=f"u{i}") for i in range(5)), size=3)
    assert len(cache) == 3
    assert cache.get(digest(0)) is None
    assert cache.get(digest(4)) is not None
    assert set(cache._by_key) == {"k2", "k3", "k4"}
    assert set(cache._by_owner) == {"u2", "u3", "u4"}


def test_cache_hit_refreshes_lru_position() -> None:
    cache = filled(principal("k0"), principal("k1"), size=2)
    assert cache.get(digest(0)) is not None
    cache.put(digest(2), principal("k2"), cache.generation)
    assert cache.get(digest(0)) is not None
    assert cache.get(digest(1)) is None


def test_cache_entry_older_than_ttl_is_a_miss() -> None:
    cache = KeyCache(10, 0.05, 5)
    cache.put(digest(0), principal(ttl=-1), cache.generation)
    assert cache.get(digest(0)) is None
    assert len(cache) == 0
    assert cache._by_key == {}


def test_cache_counts_hits_and_misses() -> None:
    cache = filled(principal())
    cache.get(digest(0))
    cache.get(digest(9))
    assert (cache.hits, cache.misses) == (1, 1)


async def test_cache_negative_entry_expires() -> None:
    cache = KeyCache(10, 60, 0.05)
    cache.remember_unknown(digest(1), cache.generation)
    assert cache.is_known_unknown(digest(1))
    await wait_for(lambda: not cache.is_known_unknown(digest(1)), within=1.0, what="expiry")


def test_cache_negative_entries_are_bounded() -> None:
    cache = KeyCache(10, 60, 60)
    for i in range(50):
        cache.remember_unknown(digest(i), cache.generation)
    assert len(cache._negative) <= 10


# --- eviction ---------------------------------------------------------------------------
def test_cache_evict_key_drops_only_that_key() -> None:
    cache = filled(principal("k0"), principal("k1"))
    cache.apply("key", "k0")
    assert cache.get(digest(0)) is None
    assert cache.get(digest(1)) is not None


def test_cache_evict_owner_drops_all_their_keys() -> None:
    cache = filled(principal("k0", owner="u1"), principal("k1", owner="u1"),
                   principal("k2", owner="u2"))  # fmt: skip
    cache.apply("user", "u1")
    assert [cache.get(digest(i)) is None for i in range(3)] == [True, True, False]


def test_cache_evict_group_drops_its_holders() -> None:
    cache = filled(
        principal("k0", groups=("billing",), owner_groups=("billing",)),
        principal("k1", groups=("default",)),
    )
    cache.apply("group", "billing")
    assert cache.get(digest(0)) is None
    assert cache.get(digest(1)) is not None


def test_cache_apply_unknown_kind_clears_everything() -> None:
    cache = filled(principal("k0"), principal("k1"))
    cache.remember_unknown(digest(9), cache.generation)
    cache.apply("all", "")
    assert len(cache) == 0
    assert not cache.is_known_unknown(digest(9))


def test_cache_apply_key_created_keeps_entries_and_fills() -> None:
    # A new key cannot be cached yet: its notice must not drop a fresh entry
    # (nor make an in-flight lookup discard its answer).
    cache = filled(principal("k0"))
    generation = cache.generation
    cache.apply("key-created", "k0")
    assert len(cache) == 1
    assert cache.generation == generation


def test_cache_fill_after_eviction_started_is_discarded() -> None:
    # A lookup reads the store, a change notice evicts, then the stale answer
    # arrives: it must not be cached.
    cache = KeyCache(10, 60, 5)
    generation = cache.generation
    cache.apply("key", "k0")
    cache.put(digest(0), principal("k0"), generation)
    cache.remember_unknown(digest(1), generation)
    assert cache.get(digest(0)) is None
    assert not cache.is_known_unknown(digest(1))


def test_cache_same_digest_reput_replaces_indexes() -> None:
    cache = filled(principal("k0", owner="u1"))
    cache.put(digest(0), principal("k0", owner="u2"), cache.generation)
    cache.apply("user", "u1")
    assert cache.get(digest(0)) is not None
    cache.apply("user", "u2")
    assert cache.get(digest(0)) is None


# --- what the garbage collector walks (docs/architecture.md#pauses) -----------------
def tracked_objects() -> int:
    gc.collect()  # untracks the tuples that hold only atomic values
    return len(gc.get_objects())


def test_cache_entry_leaves_one_object_for_the_collector_to_walk() -> None:
    """Each full collection walks every tracked object: a cache entry, its
    digest index and its key's digest set must add one (the Principal), not
    one per index (three sets and a frozenset, as they were: 4x the pause)."""
    entries = 2_000
    cache = KeyCache(entries, 60, 5)
    fills = [(f"k{i:05d}", digest(i), principal(f"k{i:05d}")) for i in range(entries)]
    before = tracked_objects()
    for key_id, d, p in fills:
        cache.put(d, p, cache.generation)
        cache.put_key_digests(key_id, frozenset([d]), cache.key_generation)
    del fills
    # The Principals were tracked already; what the cache adds must not be.
    assert tracked_objects() - before <= 10  # a few index containers, not per entry
    # A rolled key's two digests are still both known and evicted together.
    cache.put(digest(entries), principal("k00000"), cache.generation)
    cache.apply("key", "k00000")
    assert cache.get(digest(0)) is None and cache.get(digest(entries)) is None
    assert cache.get(digest(1)) is not None


def test_freeze_start_up_heap_takes_what_start_up_built_out_of_the_collections() -> None:
    from keygate.gateway.cli.serve import freeze_start_up_heap

    built = {i * 7919 for i in range(10_000)}  # like the key-id set: one container
    frozen = gc.get_freeze_count()
    try:
        freeze_start_up_heap()
        assert gc.get_freeze_count() > frozen
        assert not any(obj is built for obj in gc.get_objects())
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
