"""Component schemas of the admin API, in OpenAPI 3.1 (JSON Schema 2020-12) form.

Request bodies are generated from their declarations in
:mod:`gateway.service.bodies` (the structs the services decode with), and the
shapes responses share with them (names, key names, group lists, roles) are
taken from the same declarations. Written here is only what no declaration
holds: the responses, which ``as_json()`` renders
(tests/admin/test_openapi.py checks real responses against them), and the
group rule, whose checks are gateway.auth.policy's.
"""

from __future__ import annotations

import copy
import re
import typing
from typing import Any

import msgspec

from keygate.config.declare import NAME_PATTERN
from keygate.gateway.auth.keyformat import KEY_ID_ALPHABET, KEY_ID_LEN
from keygate.gateway.auth.policy import MAX_GLOB_LENGTH
from keygate.gateway.service import bodies
from keygate.gateway.service.keys import LIST_STATUSES
from keygate.gateway.service.validation import REFUSED_CHARS

Schema = dict[str, Any]

GROUP_NAME = NAME_PATTERN
USERNAME = bodies.USERNAME_PATTERN
KEY_ID = f"^[{re.escape(KEY_ID_ALPHABET)}]{{{KEY_ID_LEN}}}$"
# A query parameter's text: no control characters (gateway.service.validation.query_text).
QUERY_TEXT = rf"^[^{REFUSED_CHARS}]*$"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or null, as a 3.1 type list (admin.openapi converts it for 3.0)."""
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


def obj(
    properties: dict[str, Schema],
    *,
    required: tuple[str, ...] = (),
    closed: bool = True,
    description: str | None = None,
) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        # Unknown fields are invalid, 422 (docs/reference.md#admin-api).
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def declared(tp: Any) -> Schema:
    """The JSON Schema of a declared type (gateway.service.bodies)."""
    return msgspec.json.schema(tp)


def enum(literal: Any) -> Schema:
    return {"type": "string", "enum": list(typing.get_args(literal))}


STRING: Schema = {"type": "string"}
TIME: Schema = {"type": "string", "format": "date-time"}
GROUP_LIST: Schema = declared(bodies.GroupNames)
CURSOR: Schema = nullable({"type": "string", "description": "Pass as ?cursor= for the next page."})
DELIVERY_FIELDS = (
    "id",
    "event_id",
    "event",
    "target",
    "url",
    "status",
    "attempts",
    "next_attempt_at",
    "last_attempt_at",
    "last_status_code",
    "last_error",
    "last_response",
    "created_at",
)
WEBHOOK_SECRET: Schema = {
    "type": "string",
    "pattern": "^whsec_[A-Za-z0-9+/=]+$",
    "description": "The key's webhook signing secret (Standard Webhooks), shown once: in "
    "the answer that first sets webhook_url, and on rotation.",
}
METADATA: Schema = declared(bodies.Metadata)
KEY_NAME: Schema = declared(bodies.KeyName)
USER_REF: Schema = obj(
    {"id": STRING, "username": STRING}, required=("id", "username"), closed=False
)
DISABLED_BY: Schema = nullable(
    obj(
        {
            "id": nullable({"type": "string", "description": "null: the CLI."}),
            "username": {"type": "string", "description": "cli:<os user> for the CLI."},
        },
        required=("id", "username"),
        closed=False,
        description="Who disabled the key; null while it is active. A key an admin "
        "disabled is enabled again only by an admin.",
    )
)

RULE: Schema = obj(
    {
        "route": {"type": "string", "description": 'A route name, or "*".'},
        "methods": {
            "type": "array",
            "minItems": 1,
            "anyOf": [
                {"const": ["*"]},
                {"items": {"type": "string", "pattern": "^[A-Z]{1,20}$"}},
            ],
            "description": 'Upper-case methods, or ["*"]. HEAD is not implied by GET.',
        },
        "paths": {
            "type": "array",
            "items": {"type": "string", "pattern": "^/", "maxLength": MAX_GLOB_LENGTH},
            "minItems": 1,
            "description": "Globs on the whole normalised path: * one segment, ** zero or more.",
        },
    },
    required=("route", "methods", "paths"),
)


def request_bodies() -> dict[str, Schema]:
    """The component of each declared request body, under the struct's name."""
    _, components = msgspec.json.schema_components(
        bodies.BODIES, ref_template="#/components/schemas/{name}"
    )
    for body in bodies.BODIES:
        schema = components[body.__name__]
        if not schema.get("required"):
            schema.pop("required", None)  # an empty list is not valid OpenAPI 3.0
        if body.exclusive is not None:
            # Naming the same thing: one or the other (422 for both).
            schema["not"] = {"required": list(body.exclusive)}
        if body.examples:
            schema["examples"] = copy.deepcopy(body.examples)
    return components


SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        {
            "error": obj(
                {
                    "code": {"type": "string", "description": "Stable snake_case code."},
                    "message": {"type": "string", "description": "One sentence."},
                    "details": {
                        "type": "object",
                        "additionalProperties": STRING,
                        "description": "422 only: a reason per field.",
                    },
                },
                required=("code", "message"),
            )
        },
        required=("error",),
    ),
    "Health": obj(
        {
            "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]},
            "checks": {
                "type": "object",
                "description": "Per dependency (`/ready`): `store`, and `redis` with the "
                "redis rate-limit backend.",
                "additionalProperties": ref("Check"),
            },
            "error": ref("ErrorBody"),
        },
        required=("status",),
    ),
    "Check": obj(
        {
            "status": {"type": "string", "enum": ["ok", "not_writable", "unavailable"]},
            "code": STRING,
            "message": STRING,
        },
        required=("status",),
    ),
    "ErrorBody": obj(
        {"code": STRING, "message": STRING}, required=("code", "message"), closed=False
    ),
    "Key": obj(
        {
            "id": {"type": "string", "pattern": KEY_ID, "description": "The public key id."},
            "display": {
                "type": "string",
                "description": "kg_<id>_…<last 4>; for an imported key …<last 4>, with the "
                "first 4 in front for a token of 32 characters or more.",
            },
            "name": KEY_NAME,
            "description": STRING,
            "status": {"type": "string", "enum": list(LIST_STATUSES)},
            "groups": GROUP_LIST,
            "owner": USER_REF,
            "created_by": nullable(USER_REF),
            "created_at": TIME,
            "updated_at": TIME,
            "last_used_at": nullable(
                {
                    **TIME,
                    "description": "The last successful authentication, to "
                    "auth.last_used_resolution (60 s by default); null: never used.",
                }
            ),
            "expires_at": nullable(TIME),
            "webhook_url": nullable(STRING),
            "metadata": METADATA,
            "disabled_by": DISABLED_BY,
            "rate_limits": {"type": "array", "items": ref("RateLimitPolicy")},
            "quota": {"anyOf": [ref("QuotaSpec"), {"type": "null"}]},
            "quota_used": nullable(
                {
                    "type": "integer",
                    "description": "Requests counted in the current quota window, as last "
                    "flushed (within auth.last_used_flush_interval); null without a quota.",
                }
            ),
            "quota_resets_at": nullable(
                {**TIME, "description": "When the quota window ends; null without a quota."}
            ),
            "allowed_ips": {"type": "array", "items": STRING},
            "avatar_url": nullable(
                {
                    "type": "string",
                    "description": "Where GET serves the key's avatar (image/png); the URL "
                    "changes with the image. null: no avatar.",
                }
            ),
        },
        required=(
            "id",
            "display",
            "name",
            "description",
            "status",
            "groups",
            "owner",
            "created_by",
            "created_at",
            "updated_at",
            "last_used_at",
            "expires_at",
            "webhook_url",
            "metadata",
            "disabled_by",
            "rate_limits",
            "quota",
            "quota_used",
            "quota_resets_at",
            "allowed_ips",
            "avatar_url",
        ),
        closed=False,
    ),
    "IssuedKey": obj(
        {
            "key": ref("Key"),
            "token": {"type": "string", "description": "Shown exactly once; store it now."},
            "webhook_secret": WEBHOOK_SECRET,
        },
        required=("key", "token"),
        closed=False,
    ),
    "Delivery": obj(
        {
            "id": STRING,
            "event_id": {"type": "string", "description": "The webhook-id every attempt carries."},
            "event": STRING,
            "target": {
                "type": "string",
                "enum": ["key", "endpoint"],
                "description": "The key's webhook_url, or an operator's endpoint.",
            },
            "url": STRING,
            "status": {"type": "string", "enum": ["pending", "delivered", "failed", "abandoned"]},
            "attempts": {"type": "integer"},
            "next_attempt_at": nullable(TIME),
            "last_attempt_at": nullable(TIME),
            "last_status_code": nullable({"type": "integer"}),
            "last_error": nullable(STRING),
            "last_response": nullable(
                {"type": "string", "description": "At most 1 KiB of the last answer's body."}
            ),
            "created_at": TIME,
        },
        required=tuple(DELIVERY_FIELDS),
        closed=False,
    ),
    "DeliveryList": obj(
        {"items": {"type": "array", "items": ref("Delivery")}, "next_cursor": CURSOR},
        required=("items", "next_cursor"),
        closed=False,
    ),
    "WebhookTest": obj(
        {"event_id": {"type": "string", "description": "The test event's webhook-id."}},
        required=("event_id",),
        closed=False,
    ),
    "WebhookSecret": obj(
        {"webhook_secret": WEBHOOK_SECRET}, required=("webhook_secret",), closed=False
    ),
    "KeyImportRecord": obj(
        {
            "key": {
                "type": "string",
                "pattern": "^[!-~]{16,256}$",
                "description": "The token exactly as clients send it: 16-256 visible ASCII "
                "characters. Only its SHA-256 digest is stored.",
            },
            "name": {**declared(bodies.KeyName), "description": "Default key-<id>; made unique "
                     "per owner with -2, -3, …"},
            "owner": {"type": "string", "pattern": USERNAME},
            "groups": {
                "anyOf": [GROUP_LIST, {"type": "string"}],
                "description": "A list, or one string of names separated by spaces, commas "
                "or semicolons; the request's groups are added.",
            },
            "expires_at": nullable(TIME),
            "description": declared(bodies.Description),
            "metadata": {"type": "object", "description": "Kept with imported_from."},
        },
        required=("key",),
    ),
    "ImportReport": obj(
        {
            "total": {"type": "integer", "description": "Records read."},
            "imported": {"type": "integer", "description": "Keys written (a dry run: that "
                         "would be)."},
            "skipped": {"type": "integer", "description": "Keys already present (by digest), "
                         "or whose token was rolled away."},
            "invalid": {
                "type": "array",
                "items": obj(
                    {"line": {"type": "integer"}, "reason": STRING},
                    required=("line", "reason"),
                    closed=False,
                ),
                "description": "Always empty in an answer: an invalid record is 422.",
            },
            "over_limit": {
                "type": "array",
                "items": obj(
                    {"owner": STRING, "keys": {"type": "integer"}, "limit": {"type": "integer"}},
                    required=("owner", "keys", "limit"),
                    closed=False,
                ),
                "description": "Owners above auth.max_keys_per_user once imported: the "
                "limit does not apply to imports, but stops their new keys.",
            },
            "dry_run": {"type": "boolean"},
        },
        required=("total", "imported", "skipped", "invalid", "over_limit", "dry_run"),
        closed=False,
    ),
    "KeyList": obj(
        {"items": {"type": "array", "items": ref("Key")}, "next_cursor": CURSOR},
        required=("items", "next_cursor"),
        closed=False,
    ),
    "User": obj(
        {
            "id": STRING,
            "username": {"type": "string", "pattern": USERNAME},
            "role": enum(bodies.Role),
            "groups": GROUP_LIST,
            "status": enum(bodies.Status),
            "created_at": TIME,
            "updated_at": TIME,
        },
        required=("id", "username", "role", "groups", "status", "created_at", "updated_at"),
        closed=False,
    ),
    "UserList": obj(
        {"items": {"type": "array", "items": ref("User")}, "next_cursor": CURSOR},
        required=("items", "next_cursor"),
        closed=False,
    ),
    "Rule": RULE,
    "Group": obj(
        {
            "name": {"type": "string", "pattern": GROUP_NAME},
            "description": STRING,
            "rules": {"type": "array", "items": ref("Rule")},
            "builtin": {"type": "boolean"},
            "created_at": TIME,
            "updated_at": TIME,
        },
        required=("name", "description", "rules", "builtin", "created_at", "updated_at"),
        closed=False,
    ),
    "GroupList": obj(
        {"items": {"type": "array", "items": ref("Group")}, "next_cursor": CURSOR},
        required=("items", "next_cursor"),
        closed=False,
    ),
    "AuditRecord": obj(
        {
            "id": {"type": "integer"},
            "at": TIME,
            "action": {"type": "string", "examples": ["key.create", "user.update"]},
            "target": obj(
                {"type": {"type": "string", "enum": ["key", "user", "group"]}, "id": STRING},
                required=("type", "id"),
                closed=False,
            ),
            "actor": obj(
                {
                    "user_id": nullable(STRING),
                    "username": nullable(STRING),
                    "key_id": nullable(STRING),
                },
                required=("user_id", "username", "key_id"),
                closed=False,
            ),
            "client_addr": nullable(STRING),
            "changes": {"type": "object", "description": "What changed; never a token."},
        },
        required=("id", "at", "action", "target", "actor", "client_addr", "changes"),
        closed=False,
    ),
    "AuditList": obj(
        {"items": {"type": "array", "items": ref("AuditRecord")}, "next_cursor": CURSOR},
        required=("items", "next_cursor"),
        closed=False,
    ),
    "Me": obj(
        {
            "user": ref("User"),
            "key": ref("Key"),
            "limits": obj(
                {"max_keys_per_user": {"type": "integer", "minimum": 1}},
                required=("max_keys_per_user",),
                closed=False,
                description="The settings a client needs to explain a refusal before it "
                "happens (auth.max_keys_per_user: keys an owner may hold that are not revoked).",
            ),
        },
        required=("user", "key", "limits"),
        closed=False,
    ),
}
SCHEMAS.update(request_bodies())
