"""The admin route table: registration and the OpenAPI document both read it.

Paths are relative to ``server.admin_prefix``. ``query`` names parameters
declared in :mod:`admin.openapi`; ``body`` and ``response`` name component
schemas in :mod:`admin.schemas`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from keygate.admin.handlers import (
    audit,
    avatars,
    console,
    docs,
    groups,
    health,
    keys,
    me,
    metrics,
    users,
    webhooks,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API = "/api/v1"


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    ok: int = 200
    response: str | None = None  # component schema of the success body; None: no JSON body
    body: str | None = None  # component schema of the request body
    body_required: bool = True
    query: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()  # 409 codes this endpoint can answer
    not_found: bool = False
    forbidden: str = ""  # when 403 means more than "the key's groups do not allow this"
    admin_only: bool = False
    public: bool = False
    media: str = "application/json"  # of a non-JSON success body
    upload: bool = False  # the request body is an image file (docs/admin-api.md#avatars)
    etag: bool = False  # answers 304 to a matching If-None-Match
    # Public from some addresses, else a key (the metrics: [metrics] allow).
    optional_key: bool = False


def _key(method: str, path: str, handler: Handler, op: str, summary: str, **kw: object) -> Endpoint:
    return Endpoint(method, API + path, handler, op, summary, "keys", **kw)  # type: ignore[arg-type]


def _admin(
    method: str, path: str, handler: Handler, op: str, summary: str, tag: str, **kw: object
) -> Endpoint:
    return Endpoint(method, API + path, handler, op, summary, tag, admin_only=True, **kw)  # type: ignore[arg-type]


PAGE = ("limit", "cursor")

ENDPOINTS: tuple[Endpoint, ...] = (
    # --- public ---------------------------------------------------------------
    Endpoint(
        "GET",
        "/health",
        health.health,
        "health",
        "Liveness probe",
        "meta",
        response="Health",
        public=True,
    ),
    Endpoint(
        "GET",
        "/ready",
        health.ready,
        "ready",
        "Readiness probe (checks the store)",
        "meta",
        response="Health",
        public=True,
    ),
    Endpoint(
        "GET",
        "/metrics",
        metrics.metrics,
        "metrics",
        "Prometheus metrics, text format: from a peer in [metrics] allow, or with an admin "
        "key (401/403 otherwise); 404 when [metrics] enabled = false",
        "meta",
        public=True,
        optional_key=True,
        not_found=True,
        media="text/plain",
    ),
    Endpoint(
        "GET",
        "/openapi.json",
        docs.openapi_json,
        "openapi",
        "This OpenAPI 3.1 document",
        "meta",
        public=True,
    ),
    Endpoint(
        "GET", "/docs", docs.docs_page, "docs", "Swagger UI", "meta", public=True, media="text/html"
    ),
    Endpoint(
        "GET",
        "/docs/openapi-3.0.json",
        docs.openapi_30_json,
        "openapi30",
        "This document in OpenAPI 3.0 form, for tools that read 3.0 only",
        "meta",
        public=True,
    ),
    Endpoint(
        "GET",
        "/docs/static/{asset}",
        docs.docs_static,
        "docsAsset",
        "A Swagger UI asset, served from the installed swagger-ui-bundle",
        "meta",
        public=True,
        not_found=True,
        media="application/octet-stream",
    ),
    Endpoint(
        "GET",
        "/console",
        console.console_redirect,
        "consoleRedirect",
        "Redirects to the web console, /console/",
        "meta",
        ok=308,
        public=True,
        media="text/html",
    ),
    Endpoint(
        "GET",
        "/console/",
        console.console_page,
        "console",
        "The web console (sign in with a key)",
        "meta",
        public=True,
        media="text/html",
    ),
    Endpoint(
        "GET",
        "/console/{asset}",
        console.console_asset,
        "consoleAsset",
        "A web console file (script, style sheet, image)",
        "meta",
        public=True,
        not_found=True,
        media="application/octet-stream",
    ),
    # --- the caller -----------------------------------------------------------
    Endpoint("GET", API + "/me", me.me, "getMe", "The calling user and key", "me", response="Me"),
    # --- keys: admin, or self-service for the caller's own keys -----------------
    _key(
        "GET",
        "/keys",
        keys.list_keys,
        "listKeys",
        "List keys, newest first",
        response="KeyList",
        query=("search", "status", "owner", "group", *PAGE),
    ),
    _key(
        "POST",
        "/keys",
        keys.create_key,
        "createKey",
        "Create a key; the token is shown once",
        ok=201,
        response="IssuedKey",
        body="KeyCreate",
        conflicts=("name_taken", "key_limit_reached"),
        forbidden="a self-service caller naming another owner",
    ),
    _admin(
        "POST",
        "/keys/import",
        keys.import_keys,
        "importKeys",
        "Import keys clients already hold (stored by digest; all or none)",
        "keys",
        response="ImportReport",
        body="KeyImport",
    ),
    _key("GET", "/keys/{id}", keys.get_key, "getKey", "One key", response="Key", not_found=True),
    _key(
        "PATCH",
        "/keys/{id}",
        keys.update_key,
        "updateKey",
        "Rename, regroup, disable/enable, change expiry, webhook or metadata",
        response="Key",
        body="KeyPatch",
        not_found=True,
        conflicts=("name_taken", "key_revoked"),
        forbidden="a self-service caller undoing an admin's block: enabling a key an admin "
        "disabled, or removing or moving later an expiry an admin set",
    ),
    _key(
        "DELETE",
        "/keys/{id}",
        keys.delete_key,
        "deleteKey",
        "Delete a key record",
        ok=204,
        not_found=True,
    ),
    _key(
        "POST",
        "/keys/{id}/revoke",
        keys.revoke_key,
        "revokeKey",
        "Revoke a key (final)",
        response="Key",
        not_found=True,
    ),
    _key(
        "POST",
        "/keys/{id}/roll",
        keys.roll_key,
        "rollKey",
        "New token for the same key; the old one works for grace_seconds",
        response="IssuedKey",
        body="RollRequest",
        body_required=False,
        not_found=True,
        conflicts=("key_revoked",),
    ),
    _key(
        "PUT",
        "/keys/{id}/avatar",
        avatars.put_avatar,
        "putKeyAvatar",
        "Set the key's avatar: a PNG, JPEG, GIF or WebP image of at most 1 MiB, "
        "re-encoded as a 256×256 PNG",
        response="Key",
        upload=True,
        not_found=True,
        conflicts=("key_revoked",),
    ),
    _key(
        "GET",
        "/keys/{id}/avatar",
        avatars.get_avatar,
        "getKeyAvatar",
        "The key's avatar (image/png, with an ETag); 404 when it has none",
        media="image/png",
        query=("v",),
        not_found=True,
        etag=True,
    ),
    _key(
        "DELETE",
        "/keys/{id}/avatar",
        avatars.delete_avatar,
        "deleteKeyAvatar",
        "Remove the key's avatar (done also when it has none)",
        ok=204,
        not_found=True,
    ),
    # --- webhooks (docs/admin-api.md#webhooks) ----------------------------------
    _key(
        "GET",
        "/keys/{id}/webhook-deliveries",
        webhooks.list_deliveries,
        "listWebhookDeliveries",
        "The key's webhook deliveries, newest first (an operator's endpoints: admins only)",
        response="DeliveryList",
        query=PAGE,
        not_found=True,
    ),
    _key(
        "POST",
        "/keys/{id}/webhook-deliveries/{delivery_id}/redeliver",
        webhooks.redeliver,
        "redeliverWebhook",
        "Send a delivery's event again (the same webhook-id), from its first attempt",
        ok=202,
        response="Delivery",
        not_found=True,
        conflicts=("no_webhook_url",),
    ),
    _key(
        "POST",
        "/keys/{id}/webhook-test",
        webhooks.test,
        "testWebhook",
        "Send a key.test event to the key's webhook_url",
        ok=202,
        response="WebhookTest",
        body="EmptyRequest",
        body_required=False,
        not_found=True,
        conflicts=("no_webhook_url", "webhook_gone", "key_revoked"),
    ),
    _key(
        "POST",
        "/keys/{id}/webhook-secret",
        webhooks.rotate_secret,
        "rotateWebhookSecret",
        "A new webhook signing secret, shown once; the old one signs beside it for 24 h",
        response="WebhookSecret",
        body="EmptyRequest",
        body_required=False,
        not_found=True,
        conflicts=("key_revoked",),
    ),
    # --- users ------------------------------------------------------------------
    _admin(
        "GET",
        "/users",
        users.list_users,
        "listUsers",
        "List users by username",
        "users",
        response="UserList",
        query=PAGE,
    ),
    _admin(
        "POST",
        "/users",
        users.create_user,
        "createUser",
        "Create a user",
        "users",
        ok=201,
        response="User",
        body="UserCreate",
        conflicts=("username_taken",),
    ),
    _admin(
        "GET",
        "/users/{username}",
        users.get_user,
        "getUser",
        "One user",
        "users",
        response="User",
        not_found=True,
    ),
    _admin(
        "PATCH",
        "/users/{username}",
        users.update_user,
        "updateUser",
        "Change role, groups or status",
        "users",
        response="User",
        body="UserPatch",
        not_found=True,
        conflicts=("last_admin",),
    ),
    _admin(
        "DELETE",
        "/users/{username}",
        users.delete_user,
        "deleteUser",
        "Delete a user and revoke their keys",
        "users",
        ok=204,
        not_found=True,
        conflicts=("last_admin",),
    ),
    # --- groups -----------------------------------------------------------------
    _admin(
        "GET",
        "/groups",
        groups.list_groups,
        "listGroups",
        "List groups",
        "groups",
        response="GroupList",
    ),
    _admin(
        "POST",
        "/groups",
        groups.create_group,
        "createGroup",
        "Create a group",
        "groups",
        ok=201,
        response="Group",
        body="GroupCreate",
        conflicts=("group_exists",),
    ),
    _admin(
        "GET",
        "/groups/{name}",
        groups.get_group,
        "getGroup",
        "One group",
        "groups",
        response="Group",
        not_found=True,
    ),
    _admin(
        "PATCH",
        "/groups/{name}",
        groups.update_group,
        "updateGroup",
        "Change a group's description or rules (not built-in groups)",
        "groups",
        response="Group",
        body="GroupPatch",
        not_found=True,
        forbidden="a built-in group",
    ),
    _admin(
        "DELETE",
        "/groups/{name}",
        groups.delete_group,
        "deleteGroup",
        "Delete a group (not built-in); force=true removes it from its holders",
        "groups",
        ok=204,
        query=("force",),
        not_found=True,
        conflicts=("group_in_use",),
        forbidden="a built-in group",
    ),
    # --- audit ------------------------------------------------------------------
    _admin(
        "GET",
        "/audit",
        audit.list_audit,
        "listAudit",
        "The audit trail, newest first",
        "audit",
        response="AuditList",
        query=("target_type", "target", "actor", *PAGE),
    ),
)


def register(app: web.Application, endpoints: Iterable[Endpoint]) -> None:
    endpoints = tuple(endpoints)
    templated = [_pattern(ep.path) for ep in endpoints if "{" in ep.path]
    shadowed: set[str] = set()
    for ep in endpoints:
        # No implicit HEAD: every registered route is one documented operation.
        app.router.add_route(ep.method, ep.path, ep.handler, name=ep.operation_id)
        if "{" not in ep.path and any(p.fullmatch(ep.path) for p in templated):
            shadowed.add(ep.path)
    for path in sorted(shadowed):
        # A fixed path a templated one also matches (/keys/import beside
        # /keys/{id}): its other methods are 405 (RFC 9110 §15.5.6), never the
        # templated route's operation on an id named "import".
        allowed = sorted(ep.method for ep in endpoints if ep.path == path)
        app.router.add_route("*", path, _not_allowed(allowed))


def _pattern(path: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(path)))


def _not_allowed(allowed: list[str]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, allowed)

    return handler


def public_matcher(endpoints: Iterable[Endpoint]) -> Callable[[str], bool]:
    """A test for "this path below the prefix is a public endpoint"."""
    patterns = [
        re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(ep.path)) for ep in endpoints if ep.public
    ]
    regex = re.compile("|".join(f"(?:{p})" for p in patterns))
    return lambda path: regex.fullmatch(path) is not None
