"""The outbox in both stores (gateway/store/sqlhooks.py): an event with every
key change and none without one; each event fanned out and each delivery
claimed by exactly one of several concurrent deliverers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from keygate.config.settings import WebhookSettings
from keygate.gateway.store.base import Store
from keygate.gateway.store.errors import UniqueViolation
from keygate.gateway.store.hookrecords import Outcome, Target
from keygate.gateway.store.records import utcnow
from keygate.gateway.store.sqlite.store import SQLiteStore
from keygate.gateway.webhooks.deliverer import Deliverer
from tests.gateway.test_store_contract import audit, make_key, make_user, store, store_url
from tests.support.polling import wait_for

__all__ = ["store", "store_url"]  # the contract's fixtures: SQLite and PostgreSQL


def to_key(event: str, url: str | None) -> list[Target]:
    return [Target("key", url)] if url else []


async def drain(st: Store) -> None:
    while await st.fan_out(to_key):
        pass


async def test_outbox_event_per_change_none_for_a_refused_one(st_: Store) -> None:
    owner = await make_user(st_, "olga")
    key = await make_key(st_, owner, "one", webhook_url="https://h.example/x")
    await make_key(st_, owner, "two")
    with pytest.raises(UniqueViolation):
        await st_.update_key(key.id, {"name": "two"}, audit=audit("key.update"))
    await st_.update_key(key.id, {"status": "disabled"}, audit=audit("key.disable"))
    await st_.roll_key(key.id, b"d" * 32, "zz99", grace_until=None, audit=audit("key.roll"))
    await drain(st_)
    items, _ = await st_.list_deliveries(key.id, 50, None, targets=("key",))
    assert [d.event for d in reversed(items)] == ["key.created", "key.disabled", "key.rolled"]
    assert len({d.event_id for d in items}) == 3
    # Nothing left to fan out: a second pass does nothing.
    assert await st_.fan_out(to_key) == 0


async def test_outbox_concurrent_fan_out_and_claims_are_exclusive(st_: Store) -> None:
    owner = await make_user(st_, "pia")
    keys = [
        await make_key(st_, owner, f"k{i}", webhook_url=f"https://h.example/{i}")
        for i in range(20)
    ]
    await asyncio.gather(*(st_.fan_out(to_key) for _ in range(4)))
    await drain(st_)
    now = utcnow()
    claims = await asyncio.gather(*(st_.claim(f"h{n}", now, 30, 10) for n in range(4)))
    claimed = [c.id for batch in claims for c in batch]
    assert len(claimed) == len(set(claimed)) == 20
    # Claimed ones are not claimed again until their claim ends.
    assert await st_.claim("late", now, 30, 50) == []
    assert await st_.claim("later", now + timedelta(seconds=31), 30, 50) != []
    assert len({k.id for k in keys}) == 20


async def test_outbox_in_order_per_key_and_gone(st_: Store) -> None:
    owner = await make_user(st_, "quinn")
    key = await make_key(st_, owner, "q", webhook_url="https://h.example/q")
    await st_.update_key(key.id, {"description": "a"}, audit=audit("key.update"))
    await drain(st_)
    now = utcnow()
    [first] = await st_.claim("me", now, 30, 10)
    assert first.event == "key.created" and first.attempts == 1
    assert await st_.claim("other", now, 30, 10) == []  # the second waits for the first
    retry = Outcome("retry", status=500, error="answered 500", next_attempt_at=now)
    await st_.record_attempt(first, "me", retry, audit=None)
    [again] = await st_.claim("me", now + timedelta(seconds=1), 30, 10)
    assert (again.id, again.attempts) == (first.id, 2)
    gone = Outcome("gone", status=410, error="410 Gone: stopped")
    await st_.record_attempt(again, "me", gone, audit=audit("webhook.gone", "key", key.id))
    items, _ = await st_.list_deliveries(key.id, 10, None, targets=("key",))
    assert Counter(d.status for d in items) == {"failed": 2}
    await st_.update_key(key.id, {"description": "b"}, audit=audit("key.update"))
    await drain(st_)
    items, _ = await st_.list_deliveries(key.id, 10, None, targets=("key",))
    assert len(items) == 2  # nothing more to a URL that answered 410


@pytest.fixture
def st_(store: Store) -> Store:
    return store


async def test_outbox_prune_keeps_pending_and_recent(st_: Store) -> None:
    owner = await make_user(st_, "rui")
    done = await make_key(st_, owner, "done", webhook_url="https://h.example/d")
    waiting = await make_key(st_, owner, "waiting", webhook_url="https://h.example/w")
    await make_key(st_, owner, "silent")  # an event with no receiver
    await drain(st_)
    now = utcnow()
    for c in await st_.claim("me", now, 30, 10):
        if c.key_id == done.id:
            await st_.record_attempt(c, "me", Outcome("delivered", status=200), audit=None)
    assert await st_.prune_webhooks(now - timedelta(days=1)) == 0  # all recent
    pruned = await st_.prune_webhooks(utcnow() + timedelta(seconds=1))
    assert pruned == 2  # the delivered one's event and the silent key's
    assert (await st_.list_deliveries(done.id, 10, None, targets=("key",)))[0] == []
    assert len((await st_.list_deliveries(waiting.id, 10, None, targets=("key",)))[0]) == 1


async def test_outbox_expiry_notices_7d_1d_expired_once_each(st_: Store) -> None:
    """The clock is the caller's: the store is asked as if days had passed."""
    owner = await make_user(st_, "sam")
    now = utcnow()
    key = await make_key(
        st_, owner, "exp", webhook_url="https://h.example/e", expires_at=now + timedelta(days=10)
    )
    assert await st_.expiry_notices(now) == 0  # 10 days left: nothing yet
    for days, written in ((3.5, 1), (3.6, 0), (9.5, 1), (9.6, 0), (10.5, 1), (11, 0)):
        at = now + timedelta(days=days)
        assert await asyncio.gather(st_.expiry_notices(at), st_.expiry_notices(at)) in (
            [written, 0], [0, written],
        ), days  # fmt: skip
    # A new expiry date makes the notices due again.
    await st_.update_key(
        key.id, {"expires_at": now + timedelta(days=20)}, audit=audit("key.update")
    )
    assert await st_.expiry_notices(now + timedelta(days=14)) == 1
    await drain(st_)
    items, _ = await st_.list_deliveries(key.id, 50, None, targets=("key",))
    assert [d.event for d in reversed(items)] == [
        "key.created", "key.expiring", "key.expiring", "key.expired",
        "key.updated", "key.expiring",
    ]  # fmt: skip


async def test_deliverer_stops_when_rung_as_it_is_stopped(tmp_path: Path) -> None:
    """A bell rung just before stop() (a last traffic notice) must not keep the
    loop alive: asyncio.wait_for on Python 3.11 could swallow that cancellation."""
    st = SQLiteStore(tmp_path / "bell.db")
    await st.open()
    try:
        for _ in range(5):
            deliverer = Deliverer(st, WebhookSettings(poll_interval=5))
            await deliverer.start()
            await wait_for(lambda d=deliverer: d.passes >= 1, within=5, what="a first pass")
            deliverer.ring()
            started = time.monotonic()
            await asyncio.wait_for(deliverer.stop(), 10)
            assert time.monotonic() - started < 1.0  # not a poll interval (5 s) or more
    finally:
        await st.close()
