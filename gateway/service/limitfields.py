"""A key's limit fields as the admin API takes them.

The contract: docs/reference.md#rate-limits-quotas-and-ip-allowlists.

Declared like every body field (:mod:`gateway.service.bodies` uses them), so
the OpenAPI document shows them and a valid body costs one conversion. A
refused value is judged item by item, so the reason names the item and its
field: ``"item 2: window must be an integer from 1 to 31536000"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from keygate.config.declare import NAME_PATTERN, declared, rule
from keygate.gateway.limits.rules import (
    MAX_ALLOWED_IPS,
    MAX_POLICIES,
    QUOTA_POLICY,
    normalise_networks,
    parse_network,
)

MAX_LIMIT = 1_000_000_000
MAX_WINDOW = 31_536_000  # 365 days
MAX_QUOTA = 1_000_000_000_000


class RateLimitPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``limit`` requests per ``window`` seconds (GCRA); ``burst`` at once."""

    name: Annotated[
        str,
        rule(
            pattern=NAME_PATTERN,
            reason="must be a name of 1-64 lower-case letters, digits, '_' or '-'",
            description='Shown in RateLimit fields and violated_policies; not "quota".',
        ),
    ]
    limit: Annotated[int, rule(ge=1, le=MAX_LIMIT, description="Requests per window.")]
    window: Annotated[int, rule(ge=1, le=MAX_WINDOW, description="Seconds.")]
    burst: (
        Annotated[
            Annotated[int, rule(ge=1, le=MAX_LIMIT)] | None,
            rule(
                reason=f"must be an integer from 1 to {MAX_LIMIT}, or null",
                description="Requests that may come at once; null: limit.",
            ),
        ]
    ) = None


class QuotaSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``limit`` requests per UTC calendar ``period``."""

    limit: Annotated[int, rule(ge=1, le=MAX_QUOTA, description="Requests per period.")]
    period: Literal["day", "month"]


def _item_problem(cls: type[msgspec.Struct], raw: Any, what: str) -> tuple[Any, str | None]:
    """``raw`` as a ``cls``, or the first problem with it, worded by its fields."""
    fields = declared(cls)
    if not isinstance(raw, dict):
        return None, f"must be an object with {what}"
    for name in raw:
        if name not in fields:
            return None, f"unknown field {str(name)[:40]!r}"
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in raw:
            if field.required:
                return None, f"{name} is required"
            continue
        value = raw[name]
        if isinstance(value, float) and value.is_integer() and field.integral:
            value = int(value)  # JSON's 5.0 is the integer 5 (RFC 8259 §6)
        values[name], problem = field.judge(value)
        if problem is not None:
            return None, f"{name} {problem}"
    return cls(**values), None


def rate_limits_problem(policies: list[RateLimitPolicy]) -> str | None:
    if len(policies) > MAX_POLICIES:
        return f"must hold at most {MAX_POLICIES} rate limits"
    names = [p.name for p in policies]
    if QUOTA_POLICY in names:
        return f"{QUOTA_POLICY!r} names the quota: give the rate limit another name"
    for name in names:
        if names.count(name) > 1:
            return f"names {name!r} twice"
    return None


def decode_rate_limits(raw: Any) -> tuple[Any, str | None]:
    if not isinstance(raw, list):
        return None, f"must be a list of at most {MAX_POLICIES} rate limits"
    if len(raw) > MAX_POLICIES:
        return None, f"must hold at most {MAX_POLICIES} rate limits"
    out = []
    for i, item in enumerate(raw, 1):
        policy, problem = _item_problem(RateLimitPolicy, item, "name, limit, window and burst")
        if problem is not None:
            return None, f"item {i}: {problem}"
        out.append(policy)
    problem = rate_limits_problem(out)
    return (None, problem) if problem else (out, None)


def decode_quota(raw: Any) -> tuple[Any, str | None]:
    if raw is None:
        return None, None
    return _item_problem(QuotaSpec, raw, "limit and period, or null")


def allowed_ips_problem(values: list[str]) -> str | None:
    if len(values) > MAX_ALLOWED_IPS:
        return f"must hold at most {MAX_ALLOWED_IPS} networks"
    for i, value in enumerate(values, 1):
        try:
            parse_network(value)
        except ValueError:
            return f"item {i}: not an IP address or network (CIDR) ({value[:50]!r})"
    return None


def decode_allowed_ips(raw: Any) -> tuple[Any, str | None]:
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        return None, f"must be a list of at most {MAX_ALLOWED_IPS} IP networks (CIDR)"
    problem = allowed_ips_problem(raw)
    return (None, problem) if problem else (raw, None)


RateLimits = Annotated[
    list[RateLimitPolicy],
    rule(
        max_length=MAX_POLICIES,
        decode=decode_rate_limits,
        check=rate_limits_problem,
        description="At most 5, names unique. A request must conform to every one; "
        "[]: none. Admin only.",
    ),
]
Quota = Annotated[
    QuotaSpec | None,
    rule(
        decode=decode_quota,
        description="Requests per UTC calendar day or month; null: none. Admin only.",
    ),
]
AllowedIps = Annotated[
    list[Annotated[str, rule(max_length=64)]],
    rule(
        max_length=MAX_ALLOWED_IPS,
        decode=decode_allowed_ips,
        check=allowed_ips_problem,
        description="Addresses or CIDR networks (IPv4, IPv6) the key may be used from, "
        "stored normalised; []: anywhere. Admin only.",
        examples=[["203.0.113.0/24", "2001:db8::/32"]],
    ),
]


def stored_rate_limits(policies: list[RateLimitPolicy]) -> list[dict[str, Any]]:
    return [msgspec.structs.asdict(p) for p in policies]


def stored_quota(quota: QuotaSpec | None) -> dict[str, Any] | None:
    return None if quota is None else msgspec.structs.asdict(quota)


def stored_allowed_ips(values: list[str]) -> list[str]:
    return normalise_networks(values)


def limit_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of whichever limit fields ``values`` holds."""
    out: dict[str, Any] = {}
    if "rate_limits" in values:
        out["rate_limits"] = stored_rate_limits(values["rate_limits"])
    if "quota" in values:
        out["quota"] = stored_quota(values["quota"])
    if "allowed_ips" in values:
        out["allowed_ips"] = stored_allowed_ips(values["allowed_ips"])
    return out
