"""The adversarial rig: hostile clients and faulty upstreams on both sides of a real gateway.

- ``rig_factory`` starts the real keygate app on a real port, with the same
  runner defaults as ``keygate serve`` (no test-only handler options), in
  front of the ``recorder`` (:class:`tests.support.gateway.Rig`).
- Every log line of every test (aiohttp's loggers and keygate's at DEBUG) is
  captured; a test fails at teardown if one carries a credential it used
  (:mod:`tests.support.secrets`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from keygate.config.settings import Route
from tests.support.gateway import (
    BRISK,
    SERVER_DEFAULTS,
    Rig,
    RigFactory,
    default_route,
    make_settings,
    start_keygate,
)
from tests.support.secrets import CAPTURED_LOGGERS, LineCapture, leaks, secret
from tests.support.upstreams import Recorder


@pytest.fixture(scope="session")
def log_capture() -> Iterator[LineCapture]:
    """One handler on the root logger for the whole session; the loggers at DEBUG."""
    handler = LineCapture()
    root = logging.getLogger()
    root.addHandler(handler)
    saved = {name: logging.getLogger(name).level for name in CAPTURED_LOGGERS}
    for name in CAPTURED_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(autouse=True)
def no_secret_in_logs(log_capture: LineCapture) -> Iterator[None]:
    start = len(log_capture.lines)
    yield
    bad = leaks(log_capture.lines[start:])
    assert not bad, f"credentials in log lines: {bad[:5]}"


@pytest.fixture
async def rig_factory(
    tmp_path: Path,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    recorder: Recorder,
) -> RigFactory:
    """``make(*, routes=None, server=None, up=None, **auth)``: a rig with its own store;
    by default one route ``default`` at ``/`` to ``up`` (the ``recorder``)."""
    made = 0

    async def make(
        *,
        routes: tuple[Route, ...] | None = None,
        server: Mapping[str, Any] | None = None,
        up: Recorder | None = None,
        **auth: Any,
    ) -> Rig:
        nonlocal made
        made += 1
        upstream = up or recorder
        where = tmp_path / f"gw{made}"
        where.mkdir()
        settings = make_settings(
            where,
            default_route(upstream.url) if routes is None else routes,
            server={**SERVER_DEFAULTS, **(server or {})},
            **auth,
        )
        kg = await start_keygate(settings, aiohttp_client, serve_like=True)
        secret(kg.admin_token)
        return Rig(kg, upstream)

    return make


@pytest.fixture
async def rig(request: pytest.FixtureRequest, rig_factory: RigFactory) -> Rig:
    """The gateway with one route ``default`` at ``/`` to the recorder; for a test marked
    ``brisk``, with 0.2 s header and body-idle timeouts."""
    if request.node.get_closest_marker("brisk") is not None:
        return await rig_factory(server=BRISK)
    return await rig_factory()


@pytest.fixture
async def token(rig: Rig) -> str:
    """A valid key of the built-in group ``default`` (every route, every method)."""
    return await rig.key()

