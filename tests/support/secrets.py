"""Credentials a test presented, and the log lines that must never carry them.

:func:`secret` registers a value; :class:`LineCapture` keeps every formatted
log record; :func:`leaks` picks the lines carrying a registered value or
anything shaped like a keygate token. The hardening suite wires these into a
session-wide capture and fails a test at teardown on any leak.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# Every credential a test presented (tokens, Authorization values, sentinels).
SECRETS: set[str] = set()
# Anything shaped like a keygate token, valid or not, must never be logged.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9]{1,16}_[0-9a-z]{12}_[0-9A-Za-z]{38}")
CAPTURED_LOGGERS = ("aiohttp", "keygate", "gateway", "admin", "config", "asyncio")


def secret(value: str) -> str:
    """Register ``value`` as something no log line may contain; return it."""
    if len(value) >= 8:
        SECRETS.add(value)
    return value


class LineCapture(logging.Handler):
    """Keeps every formatted record, exception text included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is still a line
            self.lines.append(f"{record.name} {record.msg!r} {record.args!r}")


def leaks(lines: Iterable[str]) -> list[str]:
    """The lines (cut to 300 characters) that carry a secret or a token-shaped string."""
    found = []
    for line in lines:
        if TOKEN_SHAPE.search(line) or any(s in line for s in SECRETS):
            found.append(line[:300])
    return found
