"""SQLite's errors sorted by what they mean to keygate, and the volume's free space.

A write that finds the disk full (``SQLITE_FULL``: SQLite reports ENOSPC so)
wrote nothing and will succeed once space is freed: 507. A database that does
not answer as a database should (I/O errors, a file that is not a database, a
lock held past ``busy_timeout``) is unavailable: 503, logged once by the
store's health. Anything else (a constraint the services catch, an SQL
mistake) is left as it is.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

# Primary result codes (https://sqlite.org/rescode.html).
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_PROTOCOL = 15
SQLITE_NOTADB = 26

UNAVAILABLE = frozenset(
    {
        SQLITE_BUSY,
        SQLITE_LOCKED,
        SQLITE_READONLY,
        SQLITE_IOERR,
        SQLITE_CORRUPT,
        SQLITE_CANTOPEN,
        SQLITE_PROTOCOL,
        SQLITE_NOTADB,
    }
)


def primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error) and primary_code(exc) == SQLITE_FULL


def is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error) and primary_code(exc) in UNAVAILABLE


def free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``directory``'s volume."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False
