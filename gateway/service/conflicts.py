"""Every 409 keygate answers, each worded once (docs/reference.md#status-codes-and-errors).

Where each rule is decided:

- ``name_taken``, ``username_taken``, ``group_exists``, ``conflict``: a unique
  index refused the row; the store says which (``UniqueViolation``).
- ``key_limit_reached``, ``key_revoked``, ``group_in_use``: checked by the
  store inside the write's transaction, so no concurrent write slips between
  the check and the change (``KeyLimitReached``, ``KeyRevoked``,
  ``GroupInUse``). The key services also refuse a revoked key up front.
- ``no_webhook_url``: from the key as read (``WebhookService.test``), or by
  the store as it redelivers to the key's current URL (``NoWebhookUrl``).
- ``webhook_gone`` (``WebhookService.test``): the key's URL answered 410.
- ``last_admin`` (``UserService``) and ``admin_exists`` (``bootstrap``): from
  ``Store.count_admins()``, before the write.

A service wraps each store write that can refuse in ``store_refusals()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from keygate.gateway.errors import Conflict
from keygate.gateway.store.errors import (
    GroupInUse,
    KeyLimitReached,
    KeyRevoked,
    NoWebhookUrl,
    StoreRefusal,
    UniqueViolation,
)

_UNIQUE = {
    "key_name": ("The owner already has a key with that name.", "name_taken"),
    "username": ("That username is taken.", "username_taken"),
    "group_name": ("A group with that name exists.", "group_exists"),
    "other": ("The record conflicts with an existing one.", "conflict"),
}


def no_webhook_url() -> Conflict:
    """A test ping or redelivery for a key with nowhere to send it
    (docs/admin-api.md#webhooks)."""
    return Conflict("The key has no webhook_url to send to.", code="no_webhook_url")


def webhook_gone() -> Conflict:
    """A test ping to a URL whose receiver answered 410 Gone: it would not be
    sent (docs/webhooks.md#retries)."""
    return Conflict(
        "The receiver answered 410 Gone; set webhook_url again to resume deliveries.",
        code="webhook_gone",
    )


def key_revoked() -> Conflict:
    return Conflict("The key is revoked; revocation is final.", code="key_revoked")


def key_limit_reached(limit: int) -> Conflict:
    return Conflict(
        f"The owner already holds {limit} keys that are not revoked.", code="key_limit_reached"
    )


def group_in_use() -> Conflict:
    return Conflict(
        "The group is held by users or keys; delete with force=true.", code="group_in_use"
    )


def last_admin() -> Conflict:
    return Conflict("This is the last active admin.", code="last_admin")


def admin_exists() -> Conflict:
    return Conflict("An admin user exists already.", code="admin_exists")


def from_refusal(refusal: StoreRefusal) -> Conflict:
    """The 409 for what a store refused."""
    if isinstance(refusal, UniqueViolation):
        message, code = _UNIQUE[refusal.what]
        return Conflict(message, code=code)
    if isinstance(refusal, KeyLimitReached):
        return key_limit_reached(refusal.limit)
    if isinstance(refusal, KeyRevoked):
        return key_revoked()
    if isinstance(refusal, GroupInUse):
        return group_in_use()
    if isinstance(refusal, NoWebhookUrl):
        return no_webhook_url()
    raise TypeError(f"no 409 for {type(refusal).__name__}")


@contextmanager
def store_refusals() -> Iterator[None]:
    """Turns a ``StoreRefusal`` raised inside into its Conflict."""
    try:
        yield
    except StoreRefusal as refusal:
        raise from_refusal(refusal) from None
