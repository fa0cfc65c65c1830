"""Admin API fixtures: the client (tests.support.admin), members made through it, a roomy
gateway, and the stores each test module runs over."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.admin import AdminApi, Member, make_member
from tests.support.gateway import GatewayFactory, Keygate, default_route
from tests.support.upstreams import Recorder


@pytest.fixture
def api(keygate: Keygate) -> AdminApi:
    return AdminApi(keygate)


@pytest.fixture
async def alice(api: AdminApi) -> Member:
    """A self-service member: user groups self-service+default, key in self-service."""
    return await make_member(api, "alice")


@pytest.fixture
async def bob(api: AdminApi) -> Member:
    return await make_member(api, "bob")


@pytest.fixture
async def plain_token(keygate: Keygate) -> str:
    """A key with neither admin nor self-service: proxy traffic only."""
    return await keygate.make_key(["default"])


@pytest.fixture
async def roomy_api(keygate_factory: GatewayFactory, upstream: Recorder) -> AdminApi:
    """A gateway whose owners may hold many keys (pagination tests)."""
    return AdminApi(await keygate_factory(default_route(upstream.url), max_keys_per_user=1000))


# Modules whose tests run over both stores: everything that reads or writes
# records. Store-agnostic ones (the auth matrix, body parsing, OpenAPI) run once.
BOTH_STORES = frozenset(
    {
        "test_audit",
        "test_avatars",
        "test_blocks",
        "test_eviction",
        "test_fuzz",
        "test_groups",
        "test_keys",
        "test_keys_rules",
        "test_pagination",
        "test_unstorable",
        "test_users",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames:
        module = metafunc.module.__name__.rsplit(".", 1)[-1]
        kinds = ["sqlite", "postgres"] if module in BOTH_STORES else ["sqlite"]
        metafunc.parametrize("store_kind", kinds, indirect=True)


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def store_url(request: pytest.FixtureRequest, store_kind: str, tmp_path: Any) -> str:
    """The admin API is exercised over both stores, with the same tests."""
    if store_kind == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path}/keygate.db"
