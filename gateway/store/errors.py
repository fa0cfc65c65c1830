"""What a store write refuses, in the store's own terms. Nothing was written.

A store enforces these inside the write's transaction, where no concurrent
write can slip between the check and the change; it never words them for a
client. The service layer turns each into the 409 the client sees
(``gateway/service/conflicts.py``, docs/reference.md#status-codes-and-errors)::

    StoreRefusal
    ├── UniqueViolation(what)    a unique index refused the row
    ├── KeyLimitReached(limit)   the owner already holds ``limit`` keys not revoked
    ├── KeyRevoked               the key is revoked, and revocation is final
    ├── GroupInUse               a user or key holds the group (delete without force)
    └── NoWebhookUrl             a redelivery to the key's URL, and the key has none
"""

from __future__ import annotations

from typing import Literal

# Which unique index refused the row: a key's name for its owner (ignoring
# case), a username, a group name, or any other (a key id or digest clash).
Unique = Literal["key_name", "username", "group_name", "other"]


class StoreRefusal(Exception):
    """A write refused by the store's own rules; its transaction rolled back."""


class UniqueViolation(StoreRefusal):
    def __init__(self, what: Unique) -> None:
        super().__init__(what)
        self.what: Unique = what


class KeyLimitReached(StoreRefusal):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class KeyRevoked(StoreRefusal):
    pass


class GroupInUse(StoreRefusal):
    pass


class NoWebhookUrl(StoreRefusal):
    pass
