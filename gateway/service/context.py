"""What every service needs: the store, the settings it judges by and a change notifier."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from aiohttp.abc import AbstractResolver

from keygate.config.settings import AuthSettings, WebhookSettings
from keygate.gateway.store.base import Store

Notify = Callable[[str, str], Awaitable[None]]


async def _ignore(kind: str, ref: str) -> None:
    """Other processes learn of changes through the store's change feed."""


def _no_bell() -> None:
    """No deliverer in this process (the CLI): a server's finds the event itself."""


@dataclass(frozen=True, slots=True)
class ServiceContext:
    store: Store
    auth: AuthSettings
    # Route names rules may refer to; None accepts any (the CLI may not know them).
    route_names: Collection[str] | None = None
    # Awaited after each commit so this process evicts (and reloads its
    # policy) before the change is acknowledged: (kind, ref).
    notify: Notify = _ignore
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    # What webhook URLs' host names are resolved with (None: the system's).
    resolver: AbstractResolver | None = None
    # Called after an event is written: this process's deliverer looks at once.
    ring: Callable[[], None] = _no_bell
