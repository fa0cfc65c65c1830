"""The console in real Chromium (docs/console.md): Python Playwright driving Debian's
``chromium`` (never ``playwright install``), headless, one browser per module.

The gateway and its upstream run on an event loop in a thread of their own
(one per module, shared by its tests), so the tests use Playwright's
synchronous API and plain blocking HTTP for the direct API calls they make.
The tests are skipped, with the reason, only when no ``chromium`` is
installed at all; ``.ci/run`` installs it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.gateway import (
    Keygate,
    default_route,
    make_settings,
    start_keygate,
    started_client,
)
from tests.support.upstreams import Recorder

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MAX_KEYS = 20  # auth.max_keys_per_user of the console's gateway
TIMEOUT_MS = 10_000  # Playwright's auto-waiting bound for one step


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def code(self) -> str | None:
        try:
            return str(self.body["error"]["code"])
        except (TypeError, KeyError):
            return None


@dataclass
class World:
    """The gateway the browser talks to, its upstream, and the loop they run on."""

    loop: asyncio.AbstractEventLoop
    kg: Keygate
    up: Recorder
    seen_dialogs: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.kg.port}"

    @property
    def console(self) -> str:
        return f"{self.url}/_keygate/console/"

    @property
    def admin(self) -> str:
        return self.kg.admin_token

    def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> Reply:
        """One admin API (``/…`` below ``/_keygate/api/v1``) or proxy (``proxy:/…``) call."""
        url = self.url + (path[6:] if path.startswith("proxy:") else "/_keygate/api/v1" + path)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw, status, got = response.read(), response.status, dict(response.headers)
        except urllib.error.HTTPError as exc:
            raw, status, got = exc.read(), exc.code, dict(exc.headers)
        parsed = (
            orjson.loads(raw)
            if raw and got.get("Content-Type", "").startswith("application/json")
            else raw
        )
        return Reply(status, parsed, got)

    def make_user(self, username: str, groups: list[str], role: str = "member") -> None:
        reply = self.call(
            "POST", "/users", self.admin, {"username": username, "groups": groups, "role": role}
        )
        assert reply.status == 201, reply.body

    def make_key(self, owner: str, groups: list[str], **extra: Any) -> tuple[str, dict[str, Any]]:
        reply = self.call("POST", "/keys", self.admin, {"owner": owner, "groups": groups, **extra})
        assert reply.status == 201, reply.body
        return reply.body["token"], reply.body["key"]

    def wait_status(self, token: str, status: int, within: float = 1.0) -> float:
        """Poll the proxy until ``token`` gets ``status``; the seconds it took."""
        start = time.monotonic()
        while True:
            if self.call("GET", "proxy:/echo", token).status == status:
                return time.monotonic() - start
            if time.monotonic() - start > within:
                raise AssertionError(f"the proxy did not answer {status} within {within} s")
            time.sleep(0.02)


def run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(60)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("console")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    up = Recorder("console-upstream")
    start = functools.partial(started_client, access_log=None)

    async def begin() -> Keygate:
        await up.start()
        settings = make_settings(tmp, default_route(up.url), max_keys_per_user=MAX_KEYS)
        return await start_keygate(settings, start)

    kg = run(loop, begin())
    try:
        yield World(loop, kg, up)
    finally:

        async def stop() -> None:
            await kg.client.close()
            await up.close()

        run(loop, stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        reason = "no chromium on PATH: install Debian's chromium package (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI installs it: never a silent skip there
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Tab:
    """A page of the console and what it reported: dialogs, script errors, CSP reports."""

    page: Any
    world: World
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def sign_in(self, token: str) -> None:
        self.page.goto(self.world.console)
        self.page.get_by_label("API key").fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.locator("#sign-out").wait_for()


def open_tab(context: Any, world: World, viewport: dict[str, int] | None = None) -> Tab:
    page = context.new_page()
    if viewport:
        page.set_viewport_size(viewport)
    page.set_default_timeout(TIMEOUT_MS)
    tab = Tab(page, world)

    def on_dialog(dialog: Any) -> None:
        tab.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: tab.errors.append(f"pageerror: {exc}"))

    def on_console(msg: Any) -> None:
        # A refused API call is logged as "Failed to load resource"; the console
        # shows those itself. Anything else (a CSP report, a script error) counts.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            tab.errors.append(f"console: {msg.text}")

    page.on("console", on_console)
    return tab


@pytest.fixture
def context(browser: Any, world: World) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=world.url)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def tab(context: Any, world: World) -> Iterator[Tab]:
    """A console tab; the test fails on any script error, CSP report or alert()."""
    tab = open_tab(context, world)
    yield tab
    assert tab.dialogs == [], tab.dialogs
    assert tab.errors == [], tab.errors
