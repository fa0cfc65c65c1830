"""Lifecycle (OWASP API8): clean starts and stops, clear failures, nothing left behind."""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import threading
import warnings
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from keygate.config.settings import Route
from keygate.gateway.http.app import build_app
from keygate.gateway.http.server import KeygateRunner
from keygate.gateway.service import ServiceContext
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.state import gateway_key, pool_key, session_key
from keygate.gateway.store.sqlite.store import SQLiteStore
from tests.support.gateway import make_settings
from tests.support.polling import wait_for
from tests.support.processes import keygate_env, run_keygate
from tests.support.secrets import secret
from tests.support.upstreams import Recorder


def _threads() -> set[threading.Thread]:
    # The loop's default executor (getaddrinfo) keeps idle workers by design.
    return {t for t in threading.enumerate() if not t.name.startswith("asyncio_")}


async def test_lifecycle_start_stop_three_times_leaves_nothing(
    tmp_path: Path, recorder: Recorder
) -> None:
    threads = _threads()
    tasks = asyncio.all_tasks()
    route = Route(name="default", prefix="/", upstream=recorder.url)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for run in range(3):
            settings = make_settings(tmp_path, (route,))
            settings = replace(settings, server=replace(settings.server, listen="127.0.0.1:0"))
            app = build_app(settings)
            runner = KeygateRunner(app)  # as keygate serve builds it
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            gw = app[gateway_key]
            if run == 0:
                issued = await create_first_admin(ServiceContext(gw.store, settings.auth))
                admin = secret(issued.token)
            async with aiohttp.ClientSession() as client:
                auth = {"Authorization": f"Bearer {admin}"}
                async with client.get(f"http://127.0.0.1:{port}/_keygate/api/v1/me",
                                      headers=auth) as resp:
                    assert resp.status == 200
                async with client.get(f"http://127.0.0.1:{port}/x") as resp:
                    assert resp.status == 401
                async with client.get(f"http://127.0.0.1:{port}/_keygate/ready") as resp:
                    assert resp.status == 200
            session, pool = app[session_key], app[pool_key]
            await runner.cleanup()
            assert session.closed and pool.is_closed
            del app, runner, site, gw, session, pool
            gc.collect()  # an unclosed session or transport warns here, as an error
    await wait_for(lambda: _threads() <= threads, what="store threads ended")
    await wait_for(lambda: asyncio.all_tasks() <= tasks | {asyncio.current_task()},
                   what="no task left behind")


def _serve(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = keygate_env(PYTHONWARNINGS="error")
    return run_keygate("serve", *args, env=env, cwd=cwd, timeout=30)


def _assert_one_clear_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("keygate: ")
    for word in words:
        assert word in lines[0], (word, lines[0])


CASES = {
    "invalid_toml": ("not toml [", ["bad.toml", "TOML"]),
    "wrong_type": ('[server]\nheader_timeout = "soon"\n', ["server.header_timeout"]),
    "zero_limit": ("[server]\nmax_header_count = 0\n", ["server.max_header_count"]),
    "unknown_setting": ("[server]\nheader_timout = 1\n", ["server.header_timout"]),
    "bad_route": ('[[routes]]\nname = "x"\nprefix = "/x"\nupstream = "ftp://h"\n',
                  ["routes.x.upstream"]),
    "bad_proxy_cidr": ('[server]\ntrusted_proxies = ["10.0.0.0/33"]\n',
                       ["server.trusted_proxies"]),
}


@pytest.mark.slow
@pytest.mark.parametrize(("text", "words"), CASES.values(), ids=CASES.keys())
def test_lifecycle_bad_config_exits_with_one_line(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    (tmp_path / "bad.toml").write_text(text)
    result = _serve(tmp_path, "--config", "bad.toml", "--upstream", "http://127.0.0.1:9")
    _assert_one_clear_line(result, *words)
    assert not (tmp_path / "keygate-data").exists()


@pytest.mark.slow
def test_lifecycle_missing_config_exits_with_one_line(tmp_path: Path) -> None:
    _assert_one_clear_line(_serve(tmp_path, "--config", "nope.toml"), "nope.toml")


@pytest.mark.slow
def test_lifecycle_unwritable_store_exits_with_one_line(tmp_path: Path) -> None:
    # Root may write anywhere; a path below a regular file can be written by no one.
    (tmp_path / "afile").write_text("")
    (tmp_path / "k.toml").write_text(f'[store]\nurl = "sqlite:///{tmp_path}/afile/sub/k.db"\n')
    result = _serve(tmp_path, "--config", "k.toml", "--upstream", "http://127.0.0.1:9")
    _assert_one_clear_line(result, "store")


async def _initialised_store(where: Path) -> None:
    store = SQLiteStore(where)
    await store.open()
    try:
        secret((await create_first_admin(
            ServiceContext(store, make_settings(where.parent, ()).auth))).token)
    finally:
        await store.close()


@pytest.mark.slow
async def test_lifecycle_port_in_use_exits_with_one_line(tmp_path: Path) -> None:
    await _initialised_store(tmp_path / "keygate-data" / "keygate.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await asyncio.to_thread(
            _serve, tmp_path, "--listen", f"127.0.0.1:{port}", "--upstream",
            "http://127.0.0.1:9",
        )
    _assert_one_clear_line(result, f"127.0.0.1:{port}")


@pytest.mark.slow
async def test_lifecycle_port_in_use_exits_nonzero_without_traceback(tmp_path: Path) -> None:
    await _initialised_store(tmp_path / "keygate-data" / "keygate.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await asyncio.to_thread(
            _serve, tmp_path, "--listen", f"127.0.0.1:{port}", "--upstream",
            "http://127.0.0.1:9",
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"keygate: cannot listen on 127.0.0.1:{port}")
