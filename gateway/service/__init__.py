"""The service layer: every business rule, shared by the CLI and the admin API."""

from __future__ import annotations

from dataclasses import dataclass

from keygate.gateway.service.actor import Actor
from keygate.gateway.service.audit import AuditService
from keygate.gateway.service.avatars import AvatarService
from keygate.gateway.service.context import ServiceContext
from keygate.gateway.service.groups import GroupService
from keygate.gateway.service.imports.service import ImportService
from keygate.gateway.service.keys import IssuedKey, KeyService
from keygate.gateway.service.users import UserService
from keygate.gateway.service.webhooks import WebhookService


@dataclass(frozen=True, slots=True)
class Services:
    keys: KeyService
    users: UserService
    groups: GroupService
    audit: AuditService
    avatars: AvatarService
    webhooks: WebhookService
    imports: ImportService

    @classmethod
    def build(cls, ctx: ServiceContext) -> Services:
        keys = KeyService(ctx)
        return cls(
            keys,
            UserService(ctx),
            GroupService(ctx),
            AuditService(ctx),
            AvatarService(ctx, keys),
            WebhookService(ctx, keys),
            ImportService(ctx),
        )


__all__ = ["Actor", "IssuedKey", "ServiceContext", "Services"]
