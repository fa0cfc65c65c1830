"""Blocks that stick (docs/admin-api.md, "Blocks"): pure rules on a key change.

- A key an admin disabled is enabled again only by an admin; one its owner
  disabled, the owner may enable.
- An expiry an admin set is a ceiling for everyone else: the owner may bring
  it forward, never remove it or move it later. It stays the admin's after
  that, so the admin's cap keeps holding.

"Admin" is the acting caller: a key whose effective groups include ``admin``,
or the CLI. ``key_change`` runs inside the store's write transaction
(``Store.update_key(check=…)``), so it judges the key as it is being changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from keygate.gateway.errors import Forbidden
from keygate.gateway.service.actor import Actor
from keygate.gateway.store.records import KeyRecord

ADMIN_DISABLED = "An admin disabled this key; only an admin can enable it."
EXPIRY_CAP = (
    "An admin set this key's expiry: it can only be brought forward, "
    "not removed or moved later, except by an admin."
)


def key_change(actor: Actor, key: KeyRecord, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields to write besides ``fields`` when ``actor`` changes ``key``;
    raises Forbidden when a block forbids the change."""
    extra: dict[str, Any] = {}
    status = fields.get("status")
    if status == "active":
        if key.status == "disabled" and key.disabled_by_admin and not actor.is_admin:
            raise Forbidden(ADMIN_DISABLED)
        extra.update(disabled_by_id=None, disabled_by_username=None, disabled_by_admin=False)
    elif status == "disabled" and (key.status != "disabled" or actor.is_admin):
        # Disabling again as the owner keeps the first record: an admin's block
        # must not turn into the owner's own (which the owner could lift).
        extra.update(
            disabled_by_id=actor.user_id,
            disabled_by_username=actor.username,
            disabled_by_admin=actor.is_admin,
        )
    if "expires_at" in fields:
        extra.update(expiry_change(actor, key, fields["expires_at"]))
    return extra


def expiry_change(actor: Actor, key: KeyRecord, new: datetime | None) -> dict[str, Any]:
    if actor.is_admin:
        return {"expires_by_admin": new is not None}
    capped = key.expires_by_admin and key.expires_at is not None
    if capped and (new is None or (key.expires_at is not None and new > key.expires_at)):
        raise Forbidden(EXPIRY_CAP)
    return {}


def expiry_set_by_admin(actor: Actor, expires_at: datetime | None) -> bool:
    """Whether a new key's expiry is an admin's cap."""
    return actor.is_admin and expires_at is not None
