"""Importing keys from other systems (docs/reference.md#imported-keys).

``entries.py`` is what every reader yields; the readers, one per format, are
``csvfile.py`` (CSV), ``jsonfile.py`` (JSON lines or an array), ``kong.py``
(Kong's ``GET /key-auths`` answer) and ``nginxmap.py`` (an nginx ``map``
block); ``check.py`` judges one entry; ``service.py`` writes the keys in
batches, one transaction each, for the CLI and the admin API alike.
"""

from __future__ import annotations

from keygate.gateway.service.imports.entries import FORMATS, Entry, Problem, Read, read

__all__ = ["FORMATS", "Entry", "Problem", "Read", "read"]
