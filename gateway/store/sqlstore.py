"""``SqlStore``: every ``Store`` operation SQLite and PostgreSQL share, written once.

Keys and verification are in ``sqlkeys.py``, key avatars in
``sqlavatars.py``, users in ``sqlusers.py``, groups in ``sqlgroups.py``, all
on the frame of ``sqlbase.py`` (the audit trail, the change feed, the hooks
each store fills in). ``SQLiteStore`` and
``PostgresStore`` subclass ``SqlStore`` and add their connections and
dialect; the package docstring (``gateway/store/__init__.py``) says where the
SQL of any one operation is.
"""

from __future__ import annotations

from keygate.gateway.store.sqlavatars import AvatarSql
from keygate.gateway.store.sqldelivery import DeliverySql
from keygate.gateway.store.sqlgroups import GroupSql
from keygate.gateway.store.sqlkeys import KeySql
from keygate.gateway.store.sqlusers import UserSql


class SqlStore(KeySql, AvatarSql, UserSql, GroupSql, DeliverySql):
    """A ``Store`` on SQL tables; a subclass adds connections and its dialect
    (the abstract parts of ``SqlBase``)."""
