"""Every admin request body, declared once (docs/reference.md#admin-api).

A body is a msgspec struct: its fields' types and :func:`config.declare.rule`
metadata are all that the API accepts as to shape, type, pattern and bounds,
with the reason it gives for a refused value; admin/schemas.py publishes the
same structs as the OpenAPI components of the same names, and the CLI's
bodies pass through the same :func:`decode`. What needs the store, the caller
or the clock (an owner or group that exists, an expiry in the future, blocks,
limits) is the services' to judge.

A field is ``UNSET`` when it was absent and has no default, or when it was
refused: :func:`decode` returns the body together with a reason for every
refused field, so a service can add its own reasons and answer them all at once.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from keygate.config.declare import END, Declared, Name, declared, rule
from keygate.gateway.auth.policy import MAX_RULES
from keygate.gateway.service import validation as v
from keygate.gateway.service.limitfields import AllowedIps, Quota, RateLimits

# One line of text without leading or trailing white space; free text.
ONE_LINE = rf"^[^\s{v.REFUSED_CHARS}](?:[^{v.REFUSED_CHARS}]*[^\s{v.REFUSED_CHARS}])?{END}"
FREE_TEXT = rf"^[^{v.REFUSED_IN_DESCRIPTION}]*$"
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}" + END
# An http(s) URI of RFC 3986 characters only (§2: unreserved, reserved and
# percent-encoded octets): no spaces, controls or raw non-ASCII.
URI_PATTERN = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+" + END
)
DURATION_PATTERN = f"^{v.DURATION_RE.pattern}{END}"

KeyName = Annotated[
    str,
    rule(
        min_length=1,
        max_length=100,
        pattern=ONE_LINE,
        reason="must be a string of 1-100 characters on one line, without leading or "
        "trailing spaces",
        description="Unique per owner, case-insensitive; one line, no leading or trailing "
        "spaces, no control characters.",
    ),
]
Description = Annotated[
    str,
    rule(
        max_length=1000,
        pattern=FREE_TEXT,
        reason="must be a string of at most 1000 characters without control characters "
        "(tabs and newlines are allowed)",
    ),
]
GroupNames = Annotated[
    list[Name], rule(max_length=100, reason="must be a list of at most 100 group names")
]
Username = Annotated[
    str,
    rule(pattern=USERNAME_PATTERN, reason="must be 1-64 letters, digits, '.', '_', '@' or '-'"),
]
Owner = Annotated[
    Annotated[Username, rule(reason="must be a username")] | None,
    rule(description="Username; another user's: admin only. Absent or null: the caller."),
]
ExpiresAt = Annotated[
    Annotated[str, rule(extra_json_schema={"format": "date-time"})] | None,
    rule(
        reason="must be an RFC 3339 time or null",
        check=v.time_problem,
        description="RFC 3339 with a time zone, in the future, within 100 years; null: "
        "never. An admin's expiry: its owner may only bring it forward.",
    ),
]
ExpiresIn = Annotated[
    Annotated[int, rule(ge=1, le=int(v.MAX_EXPIRY.total_seconds()))]
    | Annotated[str, rule(pattern=DURATION_PATTERN)]
    | None,
    rule(
        reason='must be a positive number of seconds or like "7d", "12h", "30m", within 100 years',
        check=v.duration_problem,
        description='Seconds (an integral number), or "7d", "12h", "30m", "2w", within 100 '
        "years; null: never. Not with expires_at.",
        examples=[86400, "7d"],
    ),
]
Webhook = Annotated[
    Annotated[str, rule(max_length=2048, pattern=URI_PATTERN, extra_json_schema={"format": "uri"})]
    | None,
    rule(
        reason="must be an http(s) URL of at most 2048 characters, or null", check=v.webhook_problem
    ),
]
Metadata = Annotated[
    dict[str, Any],
    rule(
        reason="must be a JSON object",
        check=v.metadata_problem,
        description="Free-form JSON object, at most 16 KiB.",
    ),
]
Role = Literal["admin", "member"]
Status = Literal["active", "disabled"]
GraceSeconds = Annotated[
    int, rule(ge=0, le=v.MAX_GRACE_SECONDS, description="How long the old token keeps working.")
]
# A rule's shape is gateway.auth.policy's (validate_rules, which also knows the
# configured routes); admin/schemas.py describes it as the Rule component.
Rules = Annotated[
    list[Any],
    rule(extra_json_schema={"items": {"$ref": "#/components/schemas/Rule"}, "maxItems": MAX_RULES}),
]


class Body(msgspec.Struct, forbid_unknown_fields=True):
    # Two fields naming the same thing: at most one may be given (422 on the second).
    exclusive: ClassVar[tuple[str, str] | None] = None
    # Shown by Swagger UI, and sent as they are by schemathesis's examples phase
    # (tests/admin/test_schemathesis.py), so each must be accepted.
    examples: ClassVar[list[dict[str, Any]]] = []


class KeyCreate(Body, kw_only=True):
    exclusive = ("expires_at", "expires_in")
    examples = [
        {"name": "billing-sync", "groups": ["default"], "expires_in": "90d"},
        {
            "name": "partner-feed",
            "groups": ["default"],
            "rate_limits": [{"name": "burst", "limit": 100, "window": 60, "burst": None}],
            "quota": {"limit": 100000, "period": "day"},
            "allowed_ips": ["203.0.113.0/24"],
        },
    ]

    name: KeyName | UnsetType = UNSET
    description: Description | UnsetType = ""
    groups: GroupNames | UnsetType
    expires_at: ExpiresAt | UnsetType = UNSET
    expires_in: ExpiresIn | UnsetType = UNSET
    owner: Owner | UnsetType = None
    webhook_url: Webhook | UnsetType = None
    metadata: Metadata | UnsetType = {}
    rate_limits: RateLimits | UnsetType = UNSET
    quota: Quota | UnsetType = UNSET
    allowed_ips: AllowedIps | UnsetType = UNSET


class KeyPatch(Body):
    exclusive = ("expires_at", "expires_in")
    examples = [{"description": "nightly billing export", "expires_in": "30d"}]

    name: KeyName | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    groups: GroupNames | UnsetType = UNSET
    expires_at: ExpiresAt | UnsetType = UNSET
    expires_in: ExpiresIn | UnsetType = UNSET
    webhook_url: Webhook | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    rate_limits: RateLimits | UnsetType = UNSET
    quota: Quota | UnsetType = UNSET
    allowed_ips: AllowedIps | UnsetType = UNSET
    status: (
        Annotated[
            Status,
            rule(
                description="Revoke with POST …/revoke. A key an admin disabled is enabled "
                "again only by an admin."
            ),
        ]
        | UnsetType
    ) = UNSET


class RollRequest(Body):
    examples = [{"grace_seconds": 3600}]

    grace_seconds: GraceSeconds | UnsetType = 0


class EmptyRequest(Body):
    """The body of an action that takes no fields (a webhook test, a secret
    rotation): none at all, or ``{}``; anything else is refused like any body."""

    examples = [{}]


class UserCreate(Body):
    examples = [{"username": "alice", "role": "member", "groups": ["self-service"]}]

    username: Username | UnsetType
    role: Role | UnsetType = "member"
    groups: (
        Annotated[GroupNames, rule(description="Groups a member may hold; never admin.")]
        | UnsetType
    ) = []


class UserPatch(Body):
    examples = [{"groups": ["self-service", "default"]}]

    role: Role | UnsetType = UNSET
    groups: GroupNames | UnsetType = UNSET
    status: Status | UnsetType = UNSET


class GroupCreate(Body):
    examples = [
        {
            "name": "billing-read",
            "description": "Read invoices",
            "rules": [{"route": "*", "methods": ["GET", "HEAD"], "paths": ["/billing/**"]}],
        }
    ]

    name: Name | UnsetType
    description: Description | UnsetType = ""
    rules: Rules | UnsetType = []


class GroupPatch(Body):
    examples = [{"description": "Read and list invoices"}]

    description: Description | UnsetType = UNSET
    rules: Rules | UnsetType = UNSET


# At most this many records in one import request (docs/admin-api.md#import-keys);
# more is 422: a larger import is several requests (each one is idempotent).
MAX_IMPORT_RECORDS = 10_000


class KeyImport(Body, kw_only=True):
    """Keys clients already hold, to be stored by digest (docs/admin-api.md#import-keys)."""

    examples = [
        {
            "records": [{"key": "3f8a0c1e-legacy-client-key", "name": "billing-sync"}],
            "groups": ["default"],
        }
    ]

    # Each record is judged by the import rules (gateway/service/imports/check.py),
    # so a refusal names its record: records[3] and its reason.
    records: Annotated[
        list[Any],
        rule(
            extra_json_schema={
                "items": {"$ref": "#/components/schemas/KeyImportRecord"},
                "maxItems": MAX_IMPORT_RECORDS,
            },
            reason="must be a list of key records",
        ),
    ]
    owner: Owner | UnsetType = None
    groups: GroupNames | UnsetType = []
    dry_run: bool | UnsetType = False
    source: Annotated[
        str,
        rule(
            pattern=r"^[a-z0-9][a-z0-9._-]{0,31}" + END,
            reason="must be 1-32 lower-case letters, digits, '.', '_' or '-'",
            description="Recorded as metadata.imported_from.",
        ),
    ] | UnsetType = "api"


BODIES: tuple[type[Body], ...] = (
    KeyCreate,
    KeyPatch,
    RollRequest,
    EmptyRequest,
    UserCreate,
    UserPatch,
    GroupCreate,
    GroupPatch,
    KeyImport,
)

B = TypeVar("B", bound=Body)


def decode(cls: type[B], raw: Any) -> tuple[B, v.Errors]:
    """``raw`` (a decoded JSON body) as a ``cls``, and a reason per refused field.

    Not an object: 400. A body that fits as a whole costs one conversion; one
    that does not is judged field by field, so that every refused field, an
    unknown one included, has its reason.
    """
    data = v.require_object(raw)
    fields, integral, checked = _plan(cls)
    if any(isinstance(data.get(name), float) for name in integral):
        data = _integral_numbers(data, integral)
    errors = v.Errors()
    refused: list[str] = []
    try:
        body = msgspec.convert(data, cls)
    except msgspec.ValidationError:
        accepted: dict[str, Any] = {}
        for name, value in data.items():
            field = fields.get(name)
            if field is None:
                errors[name[:100]] = "unknown field"
                continue
            accepted[name], problem = field.judge(value)
            if problem is not None:
                errors[name] = problem
                refused.append(name)
        for name, field in fields.items():
            if field.required and name not in data:
                errors[name] = "required"
                refused.append(name)
        body = cls(**{**accepted, **dict.fromkeys(refused, UNSET)})
    else:
        for name in checked:
            if name in data and (problem := fields[name].accepted(getattr(body, name))):
                errors[name] = problem
                refused.append(name)
        if refused:
            body = msgspec.structs.replace(body, **dict.fromkeys(refused, UNSET))
    if cls.exclusive is not None:
        first, second = cls.exclusive
        if first in data and second in data:
            errors.pop(first, None)
            errors[second] = f"give {first} or {second}, not both"
            body = msgspec.structs.replace(body, **{first: UNSET, second: UNSET})
    return body, errors


def _integral_numbers(data: dict[str, Any], integral: tuple[str, ...]) -> dict[str, Any]:
    # JSON has one number type (RFC 8259 §6): 5.0 is the integer 5, as JSON
    # Schema counts any number with a zero fractional part.
    out = dict(data)
    for name in integral:
        value = out.get(name)
        if isinstance(value, float) and value.is_integer():
            out[name] = int(value)
    return out


@functools.cache
def _plan(cls: type[Body]) -> tuple[dict[str, Declared], tuple[str, ...], tuple[str, ...]]:
    """The fields, those that take integers, and those with a check after conversion."""
    fields = declared(cls)
    integral = tuple(name for name, field in fields.items() if field.integral)
    return fields, integral, tuple(name for name, field in fields.items() if field.checked)


def unique(names: list[str]) -> list[str]:
    """Group names as stored: sorted, each once."""
    return sorted(set(names))
