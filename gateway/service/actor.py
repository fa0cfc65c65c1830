"""Who is asking: the identity every service call is authorised and audited by."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Any

from keygate.gateway.auth.cache import Principal
from keygate.gateway.errors import Forbidden
from keygate.gateway.store.records import ADMIN_GROUP, SELF_SERVICE_GROUP, AuditEntry


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: str | None
    username: str | None
    key_id: str | None
    groups: tuple[str, ...]
    client_addr: str | None = None

    @classmethod
    def from_principal(cls, principal: Principal, client_addr: str | None) -> Actor:
        return cls(
            user_id=principal.owner_id,
            username=principal.username,
            key_id=principal.key_id,
            groups=principal.groups,
            client_addr=client_addr,
        )

    @classmethod
    def cli(cls) -> Actor:
        """The operator at the CLI: full admin, audited as ``cli:<os user>``."""
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = "unknown"
        return cls(None, f"cli:{who}", None, (ADMIN_GROUP,), "local")

    @property
    def is_admin(self) -> bool:
        return ADMIN_GROUP in self.groups

    @property
    def is_self_service(self) -> bool:
        return SELF_SERVICE_GROUP in self.groups

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("This needs the admin group.")

    def require_key_access(self) -> None:
        if not (self.is_admin or self.is_self_service):
            raise Forbidden("This needs the admin or self-service group.")

    def audit(
        self, action: str, target_type: str, target_id: str, changes: dict[str, Any] | None = None
    ) -> AuditEntry:
        return AuditEntry(
            action=action,
            target_type=target_type,
            target_id=target_id,
            actor_user_id=self.user_id,
            actor_username=self.username,
            actor_key_id=self.key_id,
            client_addr=self.client_addr,
            changes=changes or {},
        )
