"""Fixtures for the core gateway tests: an app on a store that counts
(tests.support.stores)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from keygate.config.loader import sqlite_path
from keygate.config.settings import Route
from tests.support.gateway import Keygate, make_settings, start_keygate
from tests.support.stores import CountingFactory, CountingStore


@pytest.fixture
async def counting_keygate_factory(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient]]
) -> AsyncIterator[CountingFactory]:
    """Like ``keygate_factory``, but the app runs on a :class:`CountingStore`."""
    opened: list[tuple[TestClient, CountingStore]] = []

    async def factory(routes: tuple[Route, ...], **auth: Any) -> tuple[Keygate, CountingStore]:
        settings = make_settings(tmp_path, routes, **auth)
        st = CountingStore(sqlite_path(settings.store.url))
        await st.open()
        kg = await start_keygate(settings, aiohttp_client, store=st)
        opened.append((kg.client, st))
        return kg, st

    yield factory
    # The app first (its watcher and batcher use the store until they stop),
    # then the store it was lent; aiohttp_client's own teardown comes later.
    for client, st in opened:
        await client.close()
        await st.close()
