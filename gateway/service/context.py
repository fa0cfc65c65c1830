"""What every service needs: the store, the auth settings and a change notifier."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from keygate.config.settings import AuthSettings
from keygate.gateway.store.base import Store

Notify = Callable[[str, str], Awaitable[None]]


async def _ignore(kind: str, ref: str) -> None:
    """Other processes learn of changes through the store's change feed."""


@dataclass(frozen=True, slots=True)
class ServiceContext:
    store: Store
    auth: AuthSettings
    # Route names rules may refer to; None accepts any (the CLI may not know them).
    route_names: Collection[str] | None = None
    # Awaited after each commit so this process evicts (and reloads its
    # policy) before the change is acknowledged: (kind, ref).
    notify: Notify = _ignore
