"""How CLI results look: one JSON document with ``--json``, aligned text otherwise.

Human output is rendered from the same ``as_json()`` documents the JSON mode
prints, so both modes always show the same facts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from keygate.gateway.errors import KeygateError

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
TOKEN_NOTICE = "shown once: store it now, it cannot be shown again"  # noqa: S105 - prose


@dataclass(frozen=True, slots=True)
class Result:
    """What a command produced: ``doc`` for ``--json``, ``text`` for people.

    ``note`` is a hint for people (such as how to get the next page); it goes
    to stderr and never into the JSON document.
    """

    doc: Any
    text: str
    note: str | None = None


def dumps(doc: Any) -> str:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


def error_lines(exc: KeygateError) -> list[str]:
    lines = [f"error: {exc.code}: {exc.message}"]
    for field, reason in (exc.details or {}).items():
        lines.append(f"  {cell(field)}: {cell(reason)}")
    return lines


def cell(value: Any, none: str = "-", width: int | None = None) -> str:
    """One line of printable text: a terminal never receives escape sequences."""
    if value is None:
        return none
    if isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value) or none
    elif isinstance(value, dict):
        text = orjson.dumps(value).decode() if value else none
    else:
        text = str(value)
    text = _CONTROL_RE.sub(" ", text)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def short_time(value: str | None, none: str = "-") -> str:
    """``2026-11-22T13:37:00Z`` → ``2026-11-22 13:37`` (UTC) for tables."""
    if not value:
        return none
    return value[:16].replace("T", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    body = [list(r) for r in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [list(headers), *body]
    ]
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in pairs)


def token_block(token: str) -> str:
    return f"Token ({TOKEN_NOTICE}):\n\n    {token}\n"


def secret_block(secret: str) -> str:
    """A key's webhook signing secret, printed once (docs/webhooks.md#secrets)."""
    return f"Webhook signing secret (shown once: give it to the receiver now):\n\n    {secret}\n"


# --- keys -----------------------------------------------------------------
KEY_HEADERS = (
    "ID",
    "DISPLAY",
    "NAME",
    "STATUS",
    "OWNER",
    "GROUPS",
    "CREATED",
    "LAST USED",
    "EXPIRES",
)


def key_row(k: Mapping[str, Any]) -> list[str]:
    return [
        k["id"],
        cell(k["display"]),
        cell(k["name"], width=32),
        k["status"],
        cell(k["owner"]["username"]),
        cell(k["groups"], width=40),
        short_time(k["created_at"]),
        short_time(k["last_used_at"], "never"),
        short_time(k["expires_at"], "never"),
    ]


def key_table(keys: Sequence[Mapping[str, Any]]) -> str:
    if not keys:
        return "No keys."
    return table(KEY_HEADERS, (key_row(k) for k in keys))


def key_fields(k: Mapping[str, Any]) -> str:
    created_by = k["created_by"]["username"] if k.get("created_by") else None
    disabled_by = k["disabled_by"]["username"] if k.get("disabled_by") else None
    return fields(
        [
            ("id", k["id"]),
            ("display", cell(k["display"])),
            ("name", cell(k["name"])),
            ("description", cell(k["description"], "")),
            ("status", k["status"]),
            ("disabled by", cell(disabled_by)),
            ("groups", cell(k["groups"])),
            ("owner", cell(k["owner"]["username"])),
            ("created by", cell(created_by)),
            ("created at", cell(k["created_at"])),
            ("updated at", cell(k["updated_at"])),
            ("last used", cell(k["last_used_at"], "never")),
            ("expires", cell(k["expires_at"], "never")),
            ("webhook url", cell(k["webhook_url"])),
            ("metadata", cell(k["metadata"])),
            ("rate limits", cell(rate_limits_text(k.get("rate_limits") or []), "none")),
            ("quota", cell(quota_text(k), "none")),
            ("allowed ips", cell(", ".join(k.get("allowed_ips") or []) or None, "anywhere")),
            ("avatar", cell(k.get("avatar_url"), "none")),
        ]
    )


def rate_limits_text(policies: Sequence[Mapping[str, Any]]) -> str | None:
    """``burst=100/60s``, one per rate limit (``:B`` when the burst is not the limit)."""
    parts = []
    for p in policies:
        burst = f":{p['burst']}" if p.get("burst") not in (None, p["limit"]) else ""
        parts.append(f"{p['name']}={p['limit']}/{p['window']}s{burst}")
    return ", ".join(parts) or None


def quota_text(k: Mapping[str, Any]) -> str | None:
    quota = k.get("quota")
    if not quota:
        return None
    return (
        f"{quota['limit']}/{quota['period']} ({k.get('quota_used')} used, resets "
        f"{k.get('quota_resets_at')})"
    )


def issued_text(headline: str, key: Mapping[str, Any], token: str) -> str:
    return f"{headline}\n\n{key_fields(key)}\n\n{token_block(token)}"


# --- users ----------------------------------------------------------------
def user_table(users: Sequence[Mapping[str, Any]]) -> str:
    if not users:
        return "No users."
    rows = (
        [
            cell(u["username"]),
            u["role"],
            u["status"],
            cell(u["groups"], width=60),
            short_time(u["created_at"]),
        ]
        for u in users
    )
    return table(("USERNAME", "ROLE", "STATUS", "GROUPS", "CREATED"), rows)


def user_fields(u: Mapping[str, Any]) -> str:
    return fields(
        [
            ("id", u["id"]),
            ("username", cell(u["username"])),
            ("role", u["role"]),
            ("groups", cell(u["groups"])),
            ("status", u["status"]),
            ("created at", cell(u["created_at"])),
            ("updated at", cell(u["updated_at"])),
        ]
    )


# --- groups ---------------------------------------------------------------
def group_table(groups: Sequence[Mapping[str, Any]]) -> str:
    if not groups:
        return "No groups."
    rows = (
        [
            cell(g["name"]),
            "yes" if g["builtin"] else "no",
            str(len(g["rules"])),
            cell(g["description"], "", width=60),
        ]
        for g in groups
    )
    return table(("NAME", "BUILT-IN", "RULES", "DESCRIPTION"), rows)


def group_fields(g: Mapping[str, Any]) -> str:
    head = fields(
        [
            ("name", cell(g["name"])),
            ("description", cell(g["description"], "")),
            ("built-in", "yes" if g["builtin"] else "no"),
            ("created at", cell(g["created_at"])),
            ("updated at", cell(g["updated_at"])),
        ]
    )
    if not g["rules"]:
        return head + "\nrules        none"
    rules = table(
        ("ROUTE", "METHODS", "PATHS"),
        ([cell(r.get("route")), cell(r.get("methods")), cell(r.get("paths"))] for r in g["rules"]),
    )
    return f"{head}\nrules:\n" + "\n".join("  " + line for line in rules.splitlines())
