"""What a reader makes of a file: entries with their line numbers, and the
lines it could not read (pure)."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Entry:
    """One key as a file gives it; nothing judged yet but its shape."""

    line: int
    key: Any  # the token; any JSON value until check.py judges it
    name: Any = None
    owner: Any = None
    groups: Any = None  # a list of names, or one string of names
    expires_at: Any = None  # RFC 3339 text, or a datetime a reader computed
    description: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Problem:
    line: int  # 0: the file as a whole
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


@dataclass(slots=True)
class Read:
    entries: list[Entry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def problem(self, line: int, reason: str) -> None:
        self.problems.append(Problem(line, reason))


class Lines:
    """Line numbers of offsets in a text."""

    def __init__(self, text: str) -> None:
        self._starts = [i for i, c in enumerate(text) if c == "\n"]

    def at(self, offset: int) -> int:
        return bisect.bisect_left(self._starts, offset) + 1


def decode(data: bytes, out: Read) -> str | None:
    """UTF-8 text without a BOM; a line that is not UTF-8 is named, and the
    file is refused as a whole (its keys could not be read as sent)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    for number, line in enumerate(data.split(b"\n"), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.problem(number, f"not UTF-8 text (byte 0x{line[exc.start]:02x})")
    return None


Reader = Callable[[bytes], Read]


def read(data: bytes, fmt: str) -> Read:
    """The entries of ``data`` in format ``fmt`` (one of :data:`FORMATS`)."""
    from keygate.gateway.service.imports import csvfile, jsonfile, kong, nginxmap

    readers: dict[str, Reader] = {
        "csv": csvfile.read,
        "json": jsonfile.read,
        "kong": kong.read,
        "nginx-map": nginxmap.read,
    }
    out = readers[fmt](data)
    if not out.entries and not out.problems:
        out.problem(0, "the file holds no keys")
    return out


FORMATS = ("csv", "json", "kong", "nginx-map")
