"""Key rules (docs/reference.md#key-record, #keys-endpoints): create, read, list,
change, revoke, roll, delete."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from msgspec import UNSET, UnsetType

from keygate.gateway.auth import keyformat
from keygate.gateway.errors import Forbidden, NotFound
from keygate.gateway.service import blocks, bodies, conflicts
from keygate.gateway.service import cursor as cursors
from keygate.gateway.service import validation as v
from keygate.gateway.service.actor import Actor
from keygate.gateway.service.context import ServiceContext
from keygate.gateway.service.limitfields import limit_fields
from keygate.gateway.store.records import ADMIN_GROUP, KeyQuery, KeyRecord, Page, UserRecord, utcnow
from keygate.gateway.webhooks import signing
from keygate.gateway.webhooks.guard import url_refusal

LIST_STATUSES = ("active", "disabled", "revoked", "expired")
MAX_LIMIT = 500
LIMIT_FIELDS = ("rate_limits", "quota", "allowed_ips")
ADMIN_LIMITS = "Only an admin may set a key's rate limits, quota or allowed IPs."


# Aliases: inside the class, ``list`` names the method.
Names = list[str]


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: KeyRecord
    token: str  # returned exactly once, never stored or logged
    # The key's webhook signing secret, when this call gave it one: also
    # returned exactly once (docs/webhooks.md#secrets).
    webhook_secret: str | None = None


@dataclass(frozen=True, slots=True)
class UpdatedKey:
    key: KeyRecord
    webhook_secret: str | None = None  # as on IssuedKey


async def check_webhook_url(ctx: ServiceContext, url: str | None, errors: v.Errors) -> None:
    """A 422 reason under ``webhook_url`` for a URL keygate may not send to
    (docs/webhooks.md#where-a-webhook-may-go)."""
    if url is not None and "webhook_url" not in errors:
        problem = await url_refusal(url, ctx.webhooks, ctx.resolver)
        if problem is not None:
            errors["webhook_url"] = problem


class KeyService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    # --- reading ----------------------------------------------------------
    async def get(self, actor: Actor, key_id: str) -> KeyRecord:
        actor.require_key_access()
        key = await self.ctx.store.get_key(key_id)
        # Object-level check: another owner's key is "not found", never "forbidden",
        # so ids cannot be probed (OWASP API1).
        if key is None or not (actor.is_admin or key.owner_id == actor.user_id):
            raise NotFound("No such key.")
        return key

    async def list(
        self,
        actor: Actor,
        *,
        search: str | None = None,
        status: str | None = None,
        owner: str | None = None,
        group: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[KeyRecord], str | None]:
        actor.require_key_access()
        errors = v.Errors()
        if status is not None:
            v.choice(status, "status", LIST_STATUSES, errors)
        if not 1 <= limit <= MAX_LIMIT:
            errors["limit"] = f"must be between 1 and {MAX_LIMIT}"
        v.query_text(search, "search", errors)
        v.query_text(owner, "owner", errors)
        v.query_text(group, "group", errors)
        before = cursors.decode_int("k", cursor) if cursor else None
        errors.raise_if_any()
        owner_id: str | None = None
        if owner is not None:
            user = await self.ctx.store.get_user(owner)
            if user is None:
                return [], None
            owner_id = user.id
        if not actor.is_admin:
            if owner_id is not None and owner_id != actor.user_id:
                return [], None
            owner_id = actor.user_id
        page: Page[KeyRecord] = await self.ctx.store.list_keys(
            KeyQuery(
                search=search or None,
                status=status,
                owner_id=owner_id,
                group=group,
                limit=limit,
                before_seq=before,
            )
        )
        return page.items, cursors.encode("k", page.next_cursor)

    # --- writing ------------------------------------------------------------
    async def create(self, actor: Actor, body: Any) -> IssuedKey:
        actor.require_key_access()
        req, errors = bodies.decode(bodies.KeyCreate, body)
        now = utcnow()
        owner = await self._owner_for_create(actor, req.owner, errors)
        _, expires_at = v.expiry(req.expires_at, req.expires_in, errors, now)
        groups = bodies.unique(req.groups) if req.groups is not UNSET else None
        if groups is not None and owner is not None:
            await self._check_grants(actor, owner, groups, errors)
        if req.webhook_url is not UNSET:
            await check_webhook_url(self.ctx, req.webhook_url, errors)
        errors.raise_if_any()
        assert owner is not None and groups is not None
        assert req.description is not UNSET and req.webhook_url is not UNSET
        assert req.metadata is not UNSET
        limits = _limits_given(actor, req, creating=True)
        token, key_id = keyformat.generate(self.ctx.auth.key_prefix)
        record = KeyRecord(
            id=key_id,
            prefix=self.ctx.auth.key_prefix,
            last4=token[-4:],
            name=req.name if req.name is not UNSET else f"key-{key_id}",
            description=req.description,
            status="active",
            groups=tuple(groups),
            owner_id=owner.id,
            owner_username=owner.username,
            created_by_id=actor.user_id,
            created_by_username=actor.username,
            created_at=now,
            updated_at=now,
            last_used_at=None,
            expires_at=expires_at,
            webhook_url=req.webhook_url,
            metadata=req.metadata,
            expires_by_admin=blocks.expiry_set_by_admin(actor, expires_at),
            rate_limits=tuple(limits.get("rate_limits", ())),
            quota=limits.get("quota"),
            allowed_ips=tuple(limits.get("allowed_ips", ())),
        )
        audit = actor.audit(
            "key.create",
            "key",
            key_id,
            {
                "name": record.name,
                "owner": owner.username,
                "groups": groups,
                "expires_at": expires_at.isoformat() if expires_at else None,
                **limits,
            },
        )
        secret = signing.new_secret() if record.webhook_url is not None else None
        with conflicts.store_refusals():
            created = await self.ctx.store.create_key(
                record,
                keyformat.digest(token),
                max_keys=self.ctx.auth.max_keys_per_user,
                audit=audit,
                webhook_secret=secret,
            )
        await self.ctx.notify("key-created", key_id)
        self.ctx.ring()
        return IssuedKey(created, token, secret)

    async def update(self, actor: Actor, key_id: str, body: Any) -> KeyRecord:
        return (await self.change(actor, key_id, body)).key

    async def change(self, actor: Actor, key_id: str, body: Any) -> UpdatedKey:
        """``update``, and the webhook secret when the change gave the key one."""
        key = await self.get(actor, key_id)
        req, errors = bodies.decode(bodies.KeyPatch, body)
        fields: dict[str, Any] = {}
        for name in ("name", "description", "groups"):
            if (value := getattr(req, name)) is not UNSET:
                fields[name] = value
        if "groups" in fields:
            fields["groups"] = groups = bodies.unique(fields["groups"])
            owner = await self.ctx.store.get_user_by_id(key.owner_id)
            if owner is not None:
                await self._check_grants(actor, owner, groups, errors)
        given, expires_at = v.expiry(req.expires_at, req.expires_in, errors, utcnow())
        if given:
            fields["expires_at"] = expires_at
        for name in ("webhook_url", "metadata", "status"):
            if (value := getattr(req, name)) is not UNSET:
                fields[name] = value
        if fields.get("webhook_url") is not None and fields["webhook_url"] != key.webhook_url:
            await check_webhook_url(self.ctx, fields["webhook_url"], errors)
        errors.raise_if_any()
        if key.status == "revoked":
            raise conflicts.key_revoked()
        fields.update(_limits_given(actor, req, creating=False))
        if not fields:
            return UpdatedKey(key)
        candidate = signing.new_secret() if fields.get("webhook_url") is not None else None
        changes = {k: (val.isoformat() if hasattr(val, "isoformat") else val)
                   for k, val in fields.items()}
        action = "key.update"
        if set(fields) == {"status"}:
            action = "key.enable" if fields["status"] == "active" else "key.disable"
        with conflicts.store_refusals():
            updated = await self.ctx.store.update_key(
                key_id,
                fields,
                audit=actor.audit(action, "key", key_id, changes),
                check=lambda current: blocks.key_change(actor, current, fields),
                webhook_secret=candidate,
            )
        await self.ctx.notify("key", key_id)
        self.ctx.ring()
        issued: str | None = None
        if candidate is not None:
            stored, _, _ = await self.ctx.store.webhook_secrets(key_id)
            if stored is not None and hmac.compare_digest(stored, candidate):
                issued = candidate  # this change gave the key its first secret
        return UpdatedKey(updated, issued)

    async def set_status(self, actor: Actor, key_id: str, status: str) -> KeyRecord:
        return await self.update(actor, key_id, {"status": status})

    async def revoke(self, actor: Actor, key_id: str) -> KeyRecord:
        key = await self.get(actor, key_id)
        if key.status == "revoked":
            return key  # final and idempotent
        with conflicts.store_refusals():
            revoked = await self.ctx.store.update_key(
                key_id, {"status": "revoked"}, audit=actor.audit("key.revoke", "key", key_id)
            )
        await self.ctx.notify("key", key_id)
        self.ctx.ring()
        return revoked

    async def roll(self, actor: Actor, key_id: str, body: Any) -> IssuedKey:
        """``body`` is the request's object (``{}`` when none was sent): a JSON
        null or any other non-object is 400, like every other body."""
        key = await self.get(actor, key_id)
        req, errors = bodies.decode(bodies.RollRequest, body)
        errors.raise_if_any()
        grace = req.grace_seconds
        assert grace is not UNSET
        if key.status == "revoked":
            raise conflicts.key_revoked()
        # An imported key gets a keygate token, and is one from then on.
        prefix = self.ctx.auth.key_prefix if key.imported else key.prefix
        token, _ = keyformat.generate(prefix, key_id)
        grace_until = utcnow() + timedelta(seconds=grace) if grace else None
        with conflicts.store_refusals():
            rolled = await self.ctx.store.roll_key(
                key_id,
                keyformat.digest(token),
                token[-4:],
                grace_until=grace_until,
                audit=actor.audit("key.roll", "key", key_id, {"grace_seconds": grace}),
                prefix=prefix if key.imported else None,
            )
        await self.ctx.notify("key", key_id)
        self.ctx.ring()
        if key.imported:
            await self.ctx.notify("key-created", key_id)  # its id now names keygate tokens
        return IssuedKey(rolled, token)

    async def delete(self, actor: Actor, key_id: str) -> None:
        key = await self.get(actor, key_id)
        await self.ctx.store.delete_key(
            key_id, audit=actor.audit("key.delete", "key", key_id, {"name": key.name})
        )
        await self.ctx.notify("key", key_id)
        self.ctx.ring()

    # --- rules ------------------------------------------------------------
    async def _owner_for_create(
        self, actor: Actor, owner_name: str | UnsetType | None, errors: v.Errors
    ) -> UserRecord | None:
        if owner_name is UNSET:  # refused; the reason is in errors
            return None
        if owner_name is None or owner_name == actor.username:
            if actor.user_id is None:
                errors["owner"] = "required (the CLI acts for no user)"
                return None
            owner = await self.ctx.store.get_user_by_id(actor.user_id)
            if owner is None:
                raise Forbidden("The calling user no longer exists.")
            return owner
        if not actor.is_admin:
            raise Forbidden("Only an admin may create keys for another user.")
        owner = await self.ctx.store.get_user(owner_name)
        if owner is None:
            errors["owner"] = "no such user"
        return owner

    async def _check_grants(
        self, actor: Actor, owner: UserRecord, groups: Names, errors: v.Errors
    ) -> None:
        """Groups must exist and the owner must be allowed them. A self-service
        caller is always the owner, so it can grant only what it may hold."""
        known = {g.name for g in await self.ctx.store.list_groups()}
        unknown = [g for g in groups if g not in known]
        if unknown:
            errors["groups"] = f"unknown group {unknown[0]!r}"
            return
        for g in groups:
            if not may_hold(owner, g):
                errors["groups"] = f"the owner may not hold group {g!r}"
                return


def _limits_given(actor: Actor, req: Any, *, creating: bool) -> dict[str, Any]:
    """The limit fields a body sets, as stored. They are what an admin grants a
    key: anyone else setting them (beyond none, on create) is 403."""
    given = {n: getattr(req, n) for n in LIMIT_FIELDS if getattr(req, n) is not UNSET}
    if not actor.is_admin and any(
        not creating or value not in ([], None) for value in given.values()
    ):
        raise Forbidden(ADMIN_LIMITS)
    return limit_fields(given)


def may_hold(user: UserRecord, group: str) -> bool:
    if user.role == "admin":
        return True
    return group != ADMIN_GROUP and group in user.groups
