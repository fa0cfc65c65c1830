"""Real nginx and Caddy in front of keygate, configured by docs/forward-auth.md's recipes.

:func:`recipe` takes a fenced block from that page as written and points it
at the test's ports (the page uses keygate at ``127.0.0.1:8080``, the
application at ``127.0.0.1:9000``, the proxy on port ``8000``).
:func:`run_nginx` and :func:`run_caddy` start one on a free port in its own
temporary prefix (nginx in the foreground with its pid file and error log
there; Caddy with its own config and data directories), wait for it to
accept connections with a deadline, and stop it by its pid when done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from tests.support.polling import wait_for
from tests.support.raw import free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "forward-auth.md"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
CADDY = shutil.which("caddy")
START_WITHIN = 15.0


def recipe(language: str, *, keygate: int, app: int, listen: int) -> str:
    """The page's ``language`` block, with the test's ports."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(rf"```{language}\n(.*?)```", text, re.S)
    assert found is not None, f"no {language} block in {DOC.name}"
    block = found.group(1)
    block = block.replace("127.0.0.1:8080", f"127.0.0.1:{keygate}")
    block = block.replace("127.0.0.1:9000", f"127.0.0.1:{app}")
    block = block.replace("127.0.0.1:8000", f"127.0.0.1:{listen}")
    return block.replace(":8000 {", f":{listen} {{")


def _write(where: Path, name: str, text: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / name
    path.write_text(text, encoding="utf-8")
    return path


def _read(log: Path) -> str:
    return log.read_text(errors="replace")


async def _accepting(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def _running(
    argv: list[str], port: int, log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[int]:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=out, env=env, start_new_session=True
        )
    try:

        async def up() -> bool:
            if proc.returncode is not None:
                raise AssertionError(f"{argv[0]} exited: {_read(log)}")
            return await _accepting(port)

        await wait_for(up, within=START_WITHIN, what=f"{Path(argv[0]).name} to listen")
        yield port
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


_NGINX_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp_body;
    proxy_temp_path {dir}/tmp_proxy;
    fastcgi_temp_path {dir}/tmp_fastcgi;
    uwsgi_temp_path {dir}/tmp_uwsgi;
    scgi_temp_path {dir}/tmp_scgi;
{body}
}}
"""


@contextlib.asynccontextmanager
async def run_nginx(where: Path, *, keygate: int, app: int) -> AsyncIterator[int]:
    """nginx serving the page's nginx recipe; yields its port."""
    assert NGINX is not None
    port = free_port()
    body = recipe("nginx", keygate=keygate, app=app, listen=port)
    conf = _write(where, "nginx.conf", _NGINX_MAIN.format(dir=where, body=body))
    argv = [NGINX, "-p", str(where), "-c", str(conf), "-e", str(where / "error.log")]
    async with _running(argv, port, where / "stdout.log") as listening:
        yield listening


@contextlib.asynccontextmanager
async def run_caddy(where: Path, *, keygate: int, app: int) -> AsyncIterator[int]:
    """Caddy serving the page's Caddyfile recipe; yields its port."""
    assert CADDY is not None
    port = free_port()
    admin = free_port()
    global_options = (
        f"{{\n\tadmin 127.0.0.1:{admin}\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}}\n"
    )
    site = recipe("caddyfile", keygate=keygate, app=app, listen=port)
    site = site.replace(f":{port} {{", f"http://:{port} {{", 1)
    conf = _write(where, "Caddyfile", global_options + site)
    env = {
        **os.environ,
        "HOME": str(where),
        "XDG_CONFIG_HOME": str(where / "config"),
        "XDG_DATA_HOME": str(where / "data"),
    }
    argv = [CADDY, "run", "--config", str(conf), "--adapter", "caddyfile"]
    async with _running(argv, port, where / "caddy.log", env) as listening:
        yield listening
