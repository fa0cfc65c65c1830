"""Fixtures of the whole suite, built on tests/support (read its ``__init__`` first).

- ``upstream`` / ``recorder`` / ``recorder_factory``: recording echo upstreams;
- ``keygate_factory`` / ``keygate``: the real app on a real port in front of them;
- ``store``: an opened SQLite store; ``store_url``: the store every app uses;
- ``pg_database`` / ``pg_url``: PostgreSQL databases of the local server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from keygate.config.settings import Route
from keygate.gateway.store.sqlite.store import SQLiteStore
from tests.support.gateway import (
    GatewayFactory,
    Keygate,
    default_route,
    make_settings,
    start_keygate,
)
from tests.support.pg import (
    NO_SERVER,
    PG_SERVER,
    create_database,
    drop_database,
    reset_schema,
    run_in_thread,
)
from tests.support.upstreams import Recorder, RecorderFactory


@pytest.fixture
async def recorder_factory(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[RecorderFactory]:
    """Start recorders named as asked (the name is echoed in ``X-Upstream``)."""
    started: list[Recorder] = []

    async def factory(name: str) -> Recorder:
        started.append(rec := await Recorder(name).start(aiohttp_server))
        return rec

    yield factory
    for rec in started:  # let held requests go before the servers close
        rec.release.set()


@pytest.fixture
async def upstream(recorder_factory: RecorderFactory) -> Recorder:
    """The echo upstream behind ``keygate``."""
    return await recorder_factory("echo")


@pytest.fixture
async def recorder(recorder_factory: RecorderFactory) -> Recorder:
    """The recorder behind the hardening rig."""
    return await recorder_factory("recorder")


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store every app under test uses: SQLite, or with KEYGATE_TEST_STORE=postgres
    a freshly emptied PostgreSQL database (the same suite over both stores)."""
    if os.environ.get("KEYGATE_TEST_STORE") == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path}/keygate.db"


@pytest.fixture(params=["sqlite", "postgres"])
def either_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """For a test that must run on both stores whatever KEYGATE_TEST_STORE says:
    a SQLite file, then a freshly emptied PostgreSQL database."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path}/keygate.db"


@pytest.fixture
async def keygate_factory(
    tmp_path: Path, store_url: str, aiohttp_client: Callable[..., Awaitable[TestClient]]
) -> GatewayFactory:
    """``factory(routes, *, server=None, ratelimit=None, **auth)``: a running keygate on
    ``store_url`` (every one a test starts shares it), ``server``, ``ratelimit`` and auth
    settings replaced."""

    async def factory(
        routes: tuple[Route, ...],
        *,
        server: dict[str, Any] | None = None,
        ratelimit: dict[str, Any] | None = None,
        forward_auth: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        **auth: Any,
    ) -> Keygate:
        settings = make_settings(
            tmp_path,
            routes,
            store_url,
            server=server,
            ratelimit=ratelimit,
            forward_auth=forward_auth,
            metrics=metrics,
            **auth,
        )
        return await start_keygate(settings, aiohttp_client)

    return factory


@pytest.fixture
async def keygate(keygate_factory: GatewayFactory, upstream: Recorder) -> Keygate:
    """One default route to the echo upstream."""
    return await keygate_factory(default_route(upstream.url))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    st = SQLiteStore(tmp_path / "store.db")
    await st.open()
    yield st
    await st.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of a database created for this test session, dropped at its end.
    Skipped, with the reason, only when no server answers at all."""
    try:
        url = run_in_thread(create_database)
    except NO_SERVER as exc:
        pytest.skip(f"no PostgreSQL server answers at {PG_SERVER}: {type(exc).__name__}")
    try:
        yield url
    finally:
        run_in_thread(lambda: drop_database(url))


@pytest.fixture
async def pg_url(pg_database: str) -> AsyncIterator[str]:
    """The session database, emptied: every test starts from an unmigrated schema."""
    await reset_schema(pg_database)
    yield pg_database
