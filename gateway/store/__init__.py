"""The store wing: where users, groups, keys, audit records and change notices live.

A store implements ``Store`` (``base.py``): every operation the services, the
verifier, the last-used batcher and the change feed need, each write one
transaction together with its audit record and change notices; a write the
store's rules refuse raises a ``StoreRefusal`` (``errors.py``). ``records.py``
holds the records it takes and returns. Two implementations keep the same
tables (docs/reference.md#key-record):

- ``sqlite/``: ``SQLiteStore``, one file in WAL mode, for one node;
- ``postgres/``: ``PostgresStore``, an asyncpg pool with advisory locks, for
  several nodes; ``listener.py`` hears their LISTEN/NOTIFY change notices.

The SQL of one operation, say ``update_key``, is written in exactly one place:

- ``sqlkeys.py``, ``sqlavatars.py``, ``sqlusers.py``, ``sqlgroups.py``: every operation both
  databases run alike, written once (``$1``-style parameters); ``sqlbase.py``:
  each write's audit record, the audit and change-feed reads, and the hooks
  each store fills in. ``SqlStore`` (``sqlstore.py``) gathers them;
- ``sqlite/store.py``, ``postgres/store.py``: what one database does its own
  way (connections, transactions, locks, change notices, and
  ``touch_last_used``, the one operation each writes for itself) and the
  class constants spelling the SQL that differs (row locks, collation, JSON
  group tests);
- ``clauses.py``: SQL assembled at run time (SET lists, the key-list filter);
  ``rows.py``: column lists, rows to records and back.

Schemas: each database's versioned steps are in its ``migrations.py``;
``migrate.py`` runs them.
"""

from __future__ import annotations

from keygate.config.loader import sqlite_path
from keygate.gateway.store.base import Store


def open_store(url: str, *, pool_size: int = 10, loop_reads: bool = False) -> Store:
    """A store for ``url`` (not yet opened; call ``await store.open()``).

    ``loop_reads``: SQLite reads the verifier's lookups on the event loop
    (``store.sqlite_loop_reads``; only a gateway makes them).
    """
    if url.startswith("sqlite://"):
        from keygate.gateway.store.sqlite.store import SQLiteStore

        return SQLiteStore(sqlite_path(url), loop_reads=loop_reads)
    if url.startswith(("postgresql://", "postgres://")):
        from keygate.gateway.store.postgres.store import PostgresStore  # type: ignore[import-not-found]

        return PostgresStore(url, pool_size=pool_size)  # type: ignore[no-any-return]
    raise ValueError("store.url must start with sqlite:// or postgresql://")


__all__ = ["Store", "open_store"]
