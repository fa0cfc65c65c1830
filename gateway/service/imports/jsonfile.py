"""JSON: one object per line (JSON lines), or an array of them (pure).

An object holds ``key`` and optionally ``name``, ``owner``, ``groups`` (a
list, or one string of names), ``expires_at``, ``description`` and
``metadata``; any other field is refused, as the admin API refuses it.
"""

from __future__ import annotations

import json
from typing import Any

from keygate.gateway.service.imports.entries import Entry, Lines, Read, decode

FIELDS = ("key", "name", "owner", "groups", "expires_at", "description", "metadata")
_DECODER = json.JSONDecoder()


def read(data: bytes) -> Read:
    out = Read()
    text = decode(data, out)
    if text is None:
        return out
    if text.lstrip().startswith("["):
        _array(text, out)
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                out.problem(number, f"not valid JSON ({_why(exc)})")
                continue
            entry(value, number, out)
    return out


def _array(text: str, out: Read) -> None:
    """Each element with the line it starts on; a truncated array is named at
    the line where it stops."""
    lines = Lines(text)
    at = _skip(text, text.index("[") + 1)
    if text.startswith("]", at):
        return
    while True:
        try:
            value, end = _DECODER.raw_decode(text, at)
        except ValueError as exc:
            out.problem(lines.at(at), f"not valid JSON ({_why(exc)}; truncated?)")
            return
        entry(value, lines.at(at), out)
        at = _skip(text, end)
        if text.startswith(",", at):
            at = _skip(text, at + 1)
        elif text.startswith("]", at):
            if text[at + 1 :].strip():
                out.problem(lines.at(at + 1), "text after the array")
            return
        else:
            out.problem(lines.at(at), "the array does not continue or end here (truncated?)")
            return


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _why(exc: ValueError) -> str:
    msg = getattr(exc, "msg", None)
    return str(msg or "invalid").split(":")[0]


def entry(value: Any, line: int, out: Read, *, label: str = "a key record") -> None:
    """An entry from one JSON object, or the reason it is not one."""
    if not isinstance(value, dict):
        out.problem(line, f"{label} must be a JSON object")
        return
    unknown = [k for k in value if k not in FIELDS]
    if unknown:
        out.problem(line, f"unknown field {str(unknown[0])[:40]!r}")
        return
    metadata = value.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        out.problem(line, "metadata must be a JSON object")
        return
    out.entries.append(
        Entry(
            line,
            value.get("key"),
            name=value.get("name"),
            owner=value.get("owner"),
            groups=value.get("groups"),
            expires_at=value.get("expires_at"),
            description=value.get("description"),
            metadata=dict(metadata or {}),
        )
    )
