from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestClient

from keygate.config.settings import WebhookSettings
from tests.support.gateway import Keygate, default_route, make_settings, start_keygate
from tests.support.upstreams import Recorder
from tests.webhooks.receiver import Receiver, start_receiver

# Fast: every retry within a fraction of a second (the schedule is a setting).
FAST = {
    "allow_http": True,
    "allow_private": True,
    "timeout": 1.0,
    "poll_interval": 0.05,
    "retry_schedule": (0.1, 0.1, 0.1),
}


class StubResolver(AbstractResolver):
    """Names the test controls: ``names[host]`` is the address it resolves to now."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.names:
            raise OSError(f"unknown host {host}")
        address = self.names[host]
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [
            ResolveResult(
                hostname=host, host=address, port=port, family=fam, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        pass


HookFactory = Callable[..., Awaitable[Keygate]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await start_receiver()
    yield r
    r.release.set()
    assert r.server is not None
    await r.server.close()


@pytest.fixture
def resolver() -> StubResolver:
    return StubResolver()


@pytest.fixture
async def hooks_factory(
    tmp_path: Path,
    store_url: str,
    upstream: Recorder,
    resolver: StubResolver,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
) -> HookFactory:
    """``factory(**webhook settings)``: a keygate with these webhook settings over FAST."""

    async def factory(
        *, url: str | None = None, admin_token: str | None = None, **webhooks: Any
    ) -> Keygate:
        """``url``: another store than the test's; ``admin_token``: its admin exists."""
        settings = make_settings(tmp_path, default_route(upstream.url), url or store_url)
        settings = dataclasses.replace(settings, webhooks=WebhookSettings(**{**FAST, **webhooks}))
        return await start_keygate(
            settings, aiohttp_client, resolver=resolver, admin_token=admin_token
        )

    return factory


@pytest.fixture
async def kg(hooks_factory: HookFactory) -> Keygate:
    return await hooks_factory()
