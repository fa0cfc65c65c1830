"""SIGHUP re-reads the configuration of a real ``keygate serve``, one worker or two.

New routes and limits apply to new requests, a request in flight finishes on
the route it started on, a connection open across the reload is never
dropped, and a file that does not load is refused with one line per worker
while the running configuration stays (docs/reference.md#reloading-the-configuration).
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.support.polling import wait_for
from tests.support.processes import Node, node_env, run_keygate, start_node, status_fresh
from tests.support.upstreams import Recorder, RecorderFactory

pytestmark = pytest.mark.slow
CREATE_KEY = ("keys", "create", "--group", "default", "--json")


def routes_toml(*routes: tuple[str, str, str], extra: str = "") -> str:
    """``[[routes]]`` tables of (name, prefix, upstream), each with ``extra`` lines."""
    return "".join(
        f'[[routes]]\nname = "{name}"\nprefix = "{prefix}"\nupstream = "{up}"\n{extra}\n'
        for name, prefix, up in routes
    )


def lines(node: Node, text: str) -> int:
    return sum(text in line for line in node.stderr().splitlines())


async def reloaded(node: Node, text: str, count: int) -> None:
    """Send SIGHUP and wait until ``count`` more log lines hold ``text`` (one per worker)."""
    before = lines(node, text)
    node.proc.send_signal(signal.SIGHUP)
    await wait_for(
        lambda: lines(node, text) >= before + count, within=15, what=f"{count} x {text!r}"
    )


async def upstream_of(url: str, token: str) -> str:
    """Which upstream answered ``url`` on a fresh connection (any worker may take it)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return str(resp.headers["X-Upstream"])


@pytest.mark.parametrize("workers", [1, 2])
async def test_reload_routes_and_limits_without_dropping_a_connection(
    tmp_path: Path, recorder_factory: RecorderFactory, workers: int
) -> None:
    old, new = await recorder_factory("old"), await recorder_factory("new")
    config = tmp_path / "keygate.toml"
    config.write_text(
        routes_toml(("api", "/api", old.url), ("held", "/held", old.at("/_up/hold")))
    )
    env = node_env(f"sqlite:///{tmp_path}/kg.db")
    node = await start_node(tmp_path, env, "--config", str(config), "--workers", str(workers))
    try:
        created = run_keygate(*CREATE_KEY, env=env, cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        token = json.loads(created.stdout)["token"]
        auth = {"Authorization": f"Bearer {token}"}
        assert await upstream_of(f"{node.url}/api/x", token) == "old"

        async with aiohttp.ClientSession() as kept:  # one keep-alive connection throughout
            async with kept.post(f"{node.url}/api/x", data=b"12345", headers=auth) as resp:
                assert (resp.status, resp.headers["X-Upstream"]) == (200, "old")
            # A request in flight across the reload, on the old route's upstream.
            held = asyncio.create_task(status_and_body(f"{node.url}/held/x", auth))
            await wait_for(lambda: old.holding == 1, within=10, what="the held request")

            config.write_text(
                routes_toml(("api", "/api", new.url), extra="max_body_bytes = 4")
                + routes_toml(("more", "/more", new.url))
            )
            await reloaded(node, "config reloaded", workers)

            async def all_new() -> bool:
                return {await upstream_of(f"{node.url}/api/x", token) for _ in range(6)} == {"new"}

            await wait_for(all_new, within=10, what="every worker on the new routes")
            assert await upstream_of(f"{node.url}/more/x", token) == "new"
            assert await status_fresh(f"{node.url}/held/x", token) == 404  # the route is gone
            async with kept.post(f"{node.url}/api/x", data=b"12345", headers=auth) as resp:
                assert resp.status == 413  # the new limit, on the connection opened before
            async with kept.get(f"{node.url}/api/y", headers=auth) as resp:
                assert (resp.status, resp.headers["X-Upstream"]) == (200, "new")
            assert not held.done()
            old.release.set()
            assert await held == (200, b"late")  # finished on the route it started on
    finally:
        assert node.stop() == 0, node.stderr()


@pytest.mark.parametrize("workers", [1, 2])
async def test_reload_of_an_invalid_file_is_refused_and_the_old_config_stays(
    tmp_path: Path, upstream: Recorder, workers: int
) -> None:
    config = tmp_path / "keygate.toml"
    config.write_text(routes_toml(("api", "/api", upstream.url)))
    env = node_env(f"sqlite:///{tmp_path}/kg.db")
    node = await start_node(tmp_path, env, "--config", str(config), "--workers", str(workers))
    try:
        created = run_keygate(*CREATE_KEY, env=env, cwd=tmp_path)
        token = json.loads(created.stdout)["token"]
        for broken in (
            "[[routes]]\nname = 'api'\nprefix = '/api'\nupstream = 'ftp://x'\n",
            "[server\n",
            routes_toml(("api", "/api", upstream.url))
            + '[server]\ntls_cert_file = "missing.pem"\ntls_key_file = "missing.pem"\n',
        ):
            config.write_text(broken)
            await reloaded(node, "config reload refused", workers)
            for _ in range(4):
                assert await status_fresh(f"{node.url}/api/x", token) == 200
        refusals = [line for line in node.stderr().splitlines() if "reload refused" in line]
        assert len(refusals) == 3 * workers, refusals  # one line each, per worker
        assert "routes.api.upstream" in refusals[0]
        assert "server.tls_cert_file" in refusals[-1]
        assert "Traceback" not in node.stderr()
        assert node.proc.poll() is None
    finally:
        assert node.stop() == 0, node.stderr()


async def status_and_body(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, await resp.read()
