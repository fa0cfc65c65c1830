"""In-memory cache of verified keys, keyed by token digest (docs/reference.md#the-proxy, step 7).

An entry holds what every request needs (status, expiry, effective groups,
identity headers), so a hit costs one dict lookup and no await. Entries are
indexed by key id, owner id and group, so a change notice evicts exactly what
it affects. ``generation`` closes the fill race: a lookup that started before
an eviction must not re-insert what it read.

Beside the verified keys, a second bounded LRU remembers, per key id, every
digest the store holds for it (current and rolled-away): a token whose key id
is real but whose digest is not among them is refused without a store query,
however many distinct wrong secrets arrive. Only a change to that key (a roll,
a revoke, a delete: all announced as ``key`` notices) changes the set; owner and
group changes never do.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache, TTLCache

from keygate.gateway.limits.rules import KeyLimits, key_limits
from keygate.gateway.request.headers import identity_headers
from keygate.gateway.store.records import ADMIN_GROUP, AuthRecord


@dataclass(slots=True, eq=False)
class Principal:
    """A verified key as seen by one request: who, what status, which groups."""

    key_id: str
    key_name: str
    key_status: str  # active | disabled | revoked
    owner_id: str
    username: str | None  # None: the owner no longer exists
    owner_active: bool
    role: str | None
    groups: tuple[str, ...]  # effective groups, sorted
    expires_at: float | None
    grace_until: float | None
    identity: dict[str, str]
    deadline: float  # monotonic time after which the entry must be re-read
    # Active key, active owner, no grace period: only expiry remains to check.
    usable: bool = False
    # Rate limits, quota, allowed IPs, parsed once; None when the key has none
    # (then they cost a request this one attribute test).
    limits: KeyLimits | None = None


def effective_groups(record: AuthRecord) -> tuple[str, ...]:
    """Key groups ∩ groups the owner may hold now (docs/reference.md#effective-groups)."""
    if record.owner_role == "admin":
        allowed: Any = None  # an admin may hold every group
    else:
        allowed = set(record.owner_groups)
        allowed.discard(ADMIN_GROUP)  # never a member's (docs/reference.md#users)
    groups = record.key_groups
    if allowed is not None:
        groups = tuple(g for g in groups if g in allowed)
    return tuple(sorted(set(groups)))


def principal_from(record: AuthRecord, ttl: float) -> Principal:
    groups = effective_groups(record)
    username = record.owner_username
    identity = identity_headers(
        key_id=record.key_id,
        key_name=record.key_name,
        user=username or "",
        groups=groups,
    )
    return Principal(
        key_id=record.key_id,
        key_name=record.key_name,
        key_status=record.key_status,
        owner_id=record.owner_id,
        username=username,
        owner_active=username is not None and record.owner_status == "active",
        role=record.owner_role,
        groups=groups,
        expires_at=record.expires_at,
        grace_until=record.grace_until,
        identity=identity,
        deadline=time.monotonic() + ttl,
        usable=(
            record.key_status == "active"
            and username is not None
            and record.owner_status == "active"
            and record.grace_until is None
        ),
        limits=key_limits(
            record.key_id,
            record.rate_limits,
            record.quota,
            record.allowed_ips,
            record.quota_used,
            record.quota_window,
        ),
    )


class _IndexedLRU(LRUCache[bytes, Principal]):
    """An LRU that tells its owner which entries it drops on its own."""

    def __init__(self, maxsize: int, on_evict: Any) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[bytes, Principal]:
        digest, principal = super().popitem()
        self._on_evict(digest, principal)
        return digest, principal


class KeyCache:
    def __init__(
        self, size: int, ttl: float, negative_ttl: float, stale_if_error: float = 0.0
    ) -> None:
        self.ttl = ttl
        # An entry past its deadline is kept this much longer, for ``stale``:
        # the verifier's answer while the store does not (auth.stale_if_error).
        self.stale_if_error = stale_if_error
        self._entries = _IndexedLRU(size, self._unindex)
        # Bounded too: a flood of random well-formed tokens must not grow memory.
        self._negative: TTLCache[bytes, bool] = TTLCache(min(size, 100_000), negative_ttl)
        # Per key id a tuple (a key has one digest, two while a roll's grace
        # runs): tuples of bytes are objects the garbage collector stops
        # tracking, sets never are (see "Pauses" in docs/architecture.md).
        self._by_key: dict[str, tuple[bytes, ...]] = {}
        self._by_owner: dict[str, set[bytes]] = {}
        self._by_group: dict[str, set[bytes]] = {}
        # key id -> (its digests, monotonic deadline); sized like the cache.
        self._digests: LRUCache[str, tuple[tuple[bytes, ...], float]] = LRUCache(size)
        self.generation = 0
        # Bumped only by what can change a key's digests (key notices, clear):
        # an owner or group notice must not discard a digest fill.
        self.key_generation = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> Principal | None:
        """The cached principal, or None when absent or older than ``cache_ttl``."""
        entries = self._entries
        # Membership first: a miss raises nothing (LRUCache's subscript raises
        # KeyError twice on one), and refusal floods are all misses.
        if digest not in entries:
            self.misses += 1
            return None
        principal = entries[digest]
        if principal.deadline <= time.monotonic():
            if principal.deadline + self.stale_if_error <= time.monotonic():
                self._drop(digest)
            self.misses += 1
            return None
        self.hits += 1
        return principal

    def stale(self, digest: bytes) -> Principal | None:
        """The entry for ``digest`` though past ``cache_ttl``, while within
        ``stale_if_error`` of it: only for when the store cannot be asked. A
        change notice heard meanwhile has evicted it, as it evicts any entry."""
        principal = self._entries.get(digest)
        if principal is None or principal.deadline + self.stale_if_error <= time.monotonic():
            return None
        return principal

    def is_known_unknown(self, digest: bytes) -> bool:
        return digest in self._negative

    def remember_unknown(self, digest: bytes, generation: int) -> None:
        if generation == self.generation:
            self._negative[digest] = True

    def key_digests(self, key_id: str) -> tuple[bytes, ...] | None:
        """Every digest the store holds for ``key_id``, or None when not known here."""
        try:
            digests, deadline = self._digests[key_id]
        except KeyError:
            return None
        if deadline <= time.monotonic():
            del self._digests[key_id]
            return None
        return digests

    def put_key_digests(
        self, key_id: str, digests: Iterable[bytes], key_generation: int
    ) -> None:
        """Remember ``key_id``'s digests unless a key notice arrived since the lookup
        began (``key_generation`` as it was then)."""
        if key_generation == self.key_generation:
            self._digests[key_id] = (tuple(digests), time.monotonic() + self.ttl)

    def put(self, digest: bytes, principal: Principal, generation: int) -> None:
        """Insert unless a change notice arrived since the lookup began."""
        if generation != self.generation:
            return
        self._drop(digest)
        self._entries[digest] = principal
        by_key = self._by_key.get(principal.key_id, ())
        if digest not in by_key:
            self._by_key[principal.key_id] = (*by_key, digest)
        self._by_owner.setdefault(principal.owner_id, set()).add(digest)
        for group in principal.groups:
            self._by_group.setdefault(group, set()).add(digest)

    # --- eviction ---------------------------------------------------------
    def evict_key(self, key_id: str) -> None:
        self.key_generation += 1
        self._digests.pop(key_id, None)
        self._evict(self._by_key.get(key_id, ()))

    def evict_owner(self, owner_id: str) -> None:
        self._evict(self._by_owner.get(owner_id, ()))

    def evict_group(self, group: str) -> None:
        self._evict(self._by_group.get(group, ()))

    def apply(self, kind: str, ref: str) -> None:
        """Apply one change notice (kind: key | key-created | keys-imported | user
        | group | all)."""
        if kind == "keys-imported":
            # A deleted imported key's token, remembered as unknown, may be
            # imported again: forget the unknowns (imports are rare).
            self.generation += 1
            self._negative.clear()
            return
        if kind == "key-created":
            # Nothing can be cached for a key that did not exist (its token is
            # new and random): evicting here would only drop a fresh entry. Nor
            # can its id have a digest set: ids are random and never reused, and
            # this notice comes back as an echo after the key's first lookup.
            return
        if kind == "key":
            self.evict_key(ref)
        elif kind == "user":
            self.evict_owner(ref)
        elif kind == "group":
            self.evict_group(ref)
        else:
            self.clear()

    def clear(self) -> None:
        self.generation += 1
        self.key_generation += 1
        self._entries.clear()
        self._negative.clear()
        self._digests.clear()
        self._by_key.clear()
        self._by_owner.clear()
        self._by_group.clear()

    def _evict(self, digests: Iterable[bytes]) -> None:
        self.generation += 1
        # A new key or a rolled token is never in the negative cache (fresh
        # random secret), so only positive entries need evicting.
        for digest in list(digests):
            self._drop(digest)

    def _drop(self, digest: bytes) -> None:
        principal = self._entries.pop(digest, None)
        if principal is not None:
            self._unindex(digest, principal)

    def _unindex(self, digest: bytes, principal: Principal) -> None:
        by_key = self._by_key.get(principal.key_id)
        if by_key is not None:
            rest = tuple(d for d in by_key if d != digest)
            if rest:
                self._by_key[principal.key_id] = rest
            else:
                del self._by_key[principal.key_id]
        _discard(self._by_owner, principal.owner_id, digest)
        for group in principal.groups:
            _discard(self._by_group, group, digest)


def _discard(index: dict[str, set[bytes]], name: str, digest: bytes) -> None:
    members = index.get(name)
    if members is not None:
        members.discard(digest)
        if not members:
            del index[name]


__all__ = ["KeyCache", "Principal", "effective_groups", "principal_from"]
