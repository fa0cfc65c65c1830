"""The quick start: ``keygate serve`` prints where the console is, and it is there."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import node_env, serve_node
from tests.support.upstreams import Recorder


@pytest.mark.slow
async def test_serve_prints_the_console_url_and_serves_it(
    tmp_path: Path, upstream: Recorder
) -> None:
    node = await serve_node(tmp_path, node_env(f"sqlite:///{tmp_path}/k.db"), upstream.url)
    try:
        match = re.search(r"web console at (http://\S+/console/)", node.stderr())
        assert match is not None, node.stderr()
        assert match.group(1) == f"{node.url}/_keygate/console/"
        async with aiohttp.ClientSession() as session, session.get(match.group(1)) as resp:
            assert resp.status == 200
            assert "app.js" in await resp.text()
            assert resp.headers["Cache-Control"] == "no-store"
    finally:
        assert node.stop(signal.SIGTERM) == 0
