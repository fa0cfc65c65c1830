"""The service layer: every business rule, shared by the CLI and the admin API."""

from __future__ import annotations

from dataclasses import dataclass

from .actor import Actor
from .audit import AuditService
from .context import ServiceContext
from .groups import GroupService
from .keys import IssuedKey, KeyService
from .users import UserService


@dataclass(frozen=True, slots=True)
class Services:
    keys: KeyService
    users: UserService
    groups: GroupService
    audit: AuditService

    @classmethod
    def build(cls, ctx: ServiceContext) -> Services:
        return cls(KeyService(ctx), UserService(ctx), GroupService(ctx), AuditService(ctx))


__all__ = ["Actor", "IssuedKey", "ServiceContext", "Services"]
