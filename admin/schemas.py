"""Component schemas of the admin API, in OpenAPI 3.1 (JSON Schema 2020-12) form.

They describe what ``as_json()`` renders and what the services accept; the
services stay the authority (a change there must be mirrored here, and
tests/admin/test_openapi.py checks responses against these shapes).
"""

from __future__ import annotations

from typing import Any

from keygate.gateway.service.validation import (
    MAX_EXPIRY,
    MAX_GRACE_SECONDS,
    REFUSED_CHARS,
    REFUSED_IN_DESCRIPTION,
    URI_PATTERN,
)

Schema = dict[str, Any]

GROUP_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
USERNAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
KEY_ID = r"^[0-9a-z]{12}$"
# What gateway.service.validation accepts, as patterns: one line of text without
# leading or trailing white space; free text; a lifetime like "7d".
ONE_LINE = rf"^[^\s{REFUSED_CHARS}](?:[^{REFUSED_CHARS}]*[^\s{REFUSED_CHARS}])?$"
FREE_TEXT = rf"^[^{REFUSED_IN_DESCRIPTION}]*$"
QUERY_TEXT = rf"^[^{REFUSED_CHARS}]*$"
DURATION = r"^[1-9][0-9]{0,9}[smhdw]?$"


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
        # SPEC §6: unknown fields are invalid (422).
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


STRING: Schema = {"type": "string"}
TIME: Schema = {"type": "string", "format": "date-time"}
GROUP_LIST: Schema = {
    "type": "array",
    "items": {"type": "string", "pattern": GROUP_NAME},
    "maxItems": 100,
}
CURSOR: Schema = nullable({"type": "string", "description": "Pass as ?cursor= for the next page."})
METADATA: Schema = {
    "type": "object",
    "description": "Free-form JSON object, at most 16 KiB.",
    "additionalProperties": True,
}
EXPIRES_AT: Schema = nullable(
    {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339 with a time zone, in the future, within 100 years; null: "
        "never. An admin's expiry: its owner may only bring it forward.",
    }
)
EXPIRES_IN: Schema = {
    "description": 'Seconds (an integral number), or "7d", "12h", "30m", "2w", within 100 '
    "years; null: never. Not with expires_at.",
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": int(MAX_EXPIRY.total_seconds())},
        {"type": "string", "pattern": DURATION},
        {"type": "null"},
    ],
    "examples": [86400, "7d"],
}
# expires_at and expires_in name the same thing: one or the other (422 for both).
ONE_EXPIRY: Schema = {"not": {"required": ["expires_at", "expires_in"]}}
WEBHOOK: Schema = nullable(
    {"type": "string", "format": "uri", "pattern": URI_PATTERN, "maxLength": 2048}
)
KEY_NAME: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 100,
    "pattern": ONE_LINE,
    "description": "Unique per owner, case-insensitive; one line, no leading or trailing "
    "spaces, no control characters.",
}
DESCRIPTION: Schema = {"type": "string", "maxLength": 1000, "pattern": FREE_TEXT}
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
            "items": {"type": "string", "pattern": "^/", "maxLength": 1024},
            "minItems": 1,
            "description": "Globs on the whole normalised path: * one segment, ** zero or more.",
        },
    },
    required=("route", "methods", "paths"),
)
RULES: Schema = {"type": "array", "items": {"$ref": "#/components/schemas/Rule"}, "maxItems": 100}

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
        {"status": {"type": "string", "enum": ["ok", "unavailable"]}, "error": ref("ErrorBody")},
        required=("status",),
    ),
    "ErrorBody": obj(
        {"code": STRING, "message": STRING}, required=("code", "message"), closed=False
    ),
    "Key": obj(
        {
            "id": {"type": "string", "pattern": KEY_ID, "description": "The public key id."},
            "display": {"type": "string", "description": "kg_<id>_…<last 4>"},
            "name": KEY_NAME,
            "description": STRING,
            "status": {"type": "string", "enum": ["active", "disabled", "revoked", "expired"]},
            "groups": GROUP_LIST,
            "owner": USER_REF,
            "created_by": nullable(USER_REF),
            "created_at": TIME,
            "updated_at": TIME,
            "last_used_at": nullable(TIME),
            "expires_at": nullable(TIME),
            "webhook_url": nullable(STRING),
            "metadata": METADATA,
            "disabled_by": DISABLED_BY,
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
        ),
        closed=False,
    ),
    "IssuedKey": obj(
        {
            "key": ref("Key"),
            "token": {"type": "string", "description": "Shown exactly once; store it now."},
        },
        required=("key", "token"),
        closed=False,
    ),
    "KeyList": obj(
        {"items": {"type": "array", "items": ref("Key")}, "next_cursor": CURSOR},
        required=("items", "next_cursor"),
        closed=False,
    ),
    "KeyCreate": obj(
        {
            "name": KEY_NAME,
            "description": DESCRIPTION,
            "groups": GROUP_LIST,
            "expires_at": EXPIRES_AT,
            "expires_in": EXPIRES_IN,
            "owner": nullable(
                {
                    "type": "string",
                    "pattern": USERNAME,
                    "description": "Username; another user's: admin only. Absent or null: "
                    "the caller.",
                }
            ),
            "webhook_url": WEBHOOK,
            "metadata": METADATA,
        },
        required=("groups",),
    )
    | ONE_EXPIRY,
    "KeyPatch": obj(
        {
            "name": KEY_NAME,
            "description": DESCRIPTION,
            "groups": GROUP_LIST,
            "expires_at": EXPIRES_AT,
            "expires_in": EXPIRES_IN,
            "webhook_url": WEBHOOK,
            "metadata": METADATA,
            "status": {
                "type": "string",
                "enum": ["active", "disabled"],
                "description": "Revoke with POST …/revoke. A key an admin disabled is "
                "enabled again only by an admin.",
            },
        },
    )
    | ONE_EXPIRY,
    "RollRequest": obj(
        {
            "grace_seconds": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_GRACE_SECONDS,
                "default": 0,
                "description": "How long the old token keeps working.",
            }
        },
    ),
    "User": obj(
        {
            "id": STRING,
            "username": {"type": "string", "pattern": USERNAME},
            "role": {"type": "string", "enum": ["admin", "member"]},
            "groups": GROUP_LIST,
            "status": {"type": "string", "enum": ["active", "disabled"]},
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
    "UserCreate": obj(
        {
            "username": {"type": "string", "pattern": USERNAME},
            "role": {"type": "string", "enum": ["admin", "member"], "default": "member"},
            "groups": {**GROUP_LIST, "description": "Groups a member may hold; never admin."},
        },
        required=("username",),
    ),
    "UserPatch": obj(
        {
            "role": {"type": "string", "enum": ["admin", "member"]},
            "groups": GROUP_LIST,
            "status": {"type": "string", "enum": ["active", "disabled"]},
        },
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
    "GroupCreate": obj(
        {
            "name": {"type": "string", "pattern": GROUP_NAME},
            "description": DESCRIPTION,
            "rules": RULES,
        },
        required=("name",),
    ),
    "GroupPatch": obj({"description": DESCRIPTION, "rules": RULES}),
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
    "Me": obj({"user": ref("User"), "key": ref("Key")}, required=("user", "key"), closed=False),
}

# Request examples: shown by Swagger UI, and sent as they are by schemathesis's
# examples phase (tests/admin/test_schemathesis.py), so each must be accepted.
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "KeyCreate": [{"name": "billing-sync", "groups": ["default"], "expires_in": "90d"}],
    "KeyPatch": [{"description": "nightly billing export", "expires_in": "30d"}],
    "RollRequest": [{"grace_seconds": 3600}],
    "UserCreate": [{"username": "alice", "role": "member", "groups": ["self-service"]}],
    "UserPatch": [{"groups": ["self-service", "default"]}],
    "GroupCreate": [
        {
            "name": "billing-read",
            "description": "Read invoices",
            "rules": [{"route": "*", "methods": ["GET", "HEAD"], "paths": ["/billing/**"]}],
        }
    ],
    "GroupPatch": [{"description": "Read and list invoices"}],
}
for _name, _examples in EXAMPLES.items():
    SCHEMAS[_name]["examples"] = _examples

