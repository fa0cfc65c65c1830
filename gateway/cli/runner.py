"""Running one command against the store: open it, call the services, close it."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from keygate.config.settings import Settings
from keygate.gateway.cli.output import Result
from keygate.gateway.errors import StoreUnavailable
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.store import Store, open_store
from keygate.gateway.store.health import explain, redact_url

# A command needs one connection at a time; a pool would only hold idle ones.
CLI_POOL_SIZE = 2


@dataclass(frozen=True, slots=True)
class Env:
    """What a store command works with. ``actor`` is the operator (full admin)."""

    settings: Settings
    ctx: ServiceContext
    services: Services
    actor: Actor

    @property
    def store(self) -> Store:
        return self.ctx.store


Handler = Callable[[argparse.Namespace, Env], Awaitable[Result]]


async def with_store(settings: Settings, handler: Handler, args: argparse.Namespace) -> Result:
    """Run ``handler`` with the store open; the store is closed whatever happens.

    The CLI writes the store directly; running gateways learn of the change
    through the store's change feed, so no notifier is needed here. Rules are
    not checked against route names: the CLI may not see every route (such as
    the one ``serve --upstream`` adds).
    """
    try:
        pool_size = min(settings.store.pool_size, CLI_POOL_SIZE)
        store = open_store(settings.store.url, pool_size=pool_size)
    except ImportError as exc:
        raise StoreUnavailable(f"The store for this URL cannot be loaded ({exc}).") from None
    try:
        await store.open()
        ctx = ServiceContext(store, settings.auth, webhooks=settings.webhooks)
        return await handler(args, Env(settings, ctx, Services.build(ctx), Actor.cli()))
    except StoreUnavailable as exc:
        # Name the store and the database's own reason, not only "unavailable".
        message = explain(exc, redact_url(settings.store.url))
        if message == exc.message:
            raise
        raise StoreUnavailable(message) from exc
    finally:
        await store.close()
