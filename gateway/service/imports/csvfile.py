"""CSV: a header row naming a ``key`` column, and optionally ``name``,
``owner``, ``groups`` (separated by spaces, commas or semicolons),
``expires_at`` and ``description``; other columns are ignored (pure).

What spreadsheets write is read: a UTF-8 BOM, quoted fields holding commas or
line breaks, CRLF line ends, blank lines. A row with fewer fields than the
header, or a quote left open at the end, is how a truncated file shows.
"""

from __future__ import annotations

import csv
import io

from keygate.gateway.service.imports.entries import Entry, Read, decode

COLUMNS = ("key", "name", "owner", "groups", "expires_at", "description")


def read(data: bytes) -> Read:
    out = Read()
    text = decode(data, out)
    if text is None:
        return out
    rows = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    line = 1
    try:
        for row in rows:
            first, line = line, rows.line_num + 1
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            if header is None:
                header = [cell.strip().lower() for cell in row]
                if "key" not in header:
                    out.problem(first, "the header names no 'key' column")
                    return out
                continue
            if len(row) < len(header):
                out.problem(
                    first, f"{len(row)} fields where the header has {len(header)} (truncated?)"
                )
                continue
            cells = {name: row[i] for i, name in enumerate(header) if name in COLUMNS}
            out.entries.append(
                Entry(
                    first,
                    cells["key"],
                    name=cells.get("name") or None,
                    owner=cells.get("owner") or None,
                    groups=cells.get("groups") or None,
                    expires_at=cells.get("expires_at") or None,
                    # A spreadsheet's line break in a cell is CRLF; keygate keeps LF.
                    description=(cells.get("description") or "").replace("\r\n", "\n") or None,
                )
            )
    except csv.Error as exc:
        out.problem(line, f"not valid CSV ({exc}; truncated?)")
    return out
