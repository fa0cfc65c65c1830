"""The persistent store: an interface and its SQLite and PostgreSQL implementations."""

from __future__ import annotations

from keygate.config.loader import sqlite_path
from keygate.gateway.store.base import Store


def open_store(url: str, *, pool_size: int = 10) -> Store:
    """A store for ``url`` (not yet opened; call ``await store.open()``)."""
    if url.startswith("sqlite://"):
        from keygate.gateway.store.sqlite.store import SQLiteStore

        return SQLiteStore(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        from keygate.gateway.store.postgres.store import PostgresStore  # type: ignore[import-not-found]

        return PostgresStore(url, pool_size=pool_size)  # type: ignore[no-any-return]
    raise ValueError("store.url must start with sqlite:// or postgresql://")


__all__ = ["Store", "open_store"]
