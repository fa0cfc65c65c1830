"""Reference: the least an aiohttp API-key forwarder must do (keep under 60 lines).

python bench/bare_forwarder.py PORT ORIGIN_URL DIGESTS_FILE  (sha256 hex, one a line)
"""

import hashlib
import sys

import aiohttp
import uvloop
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer",
       "proxy-authorization", "proxy-authenticate", "host", "x-api-key"}


def build(origin: str, digests: dict[bytes, str]) -> web.Application:
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def forward(request: web.Request) -> web.StreamResponse:
        key = request.headers.get("X-API-Key", "")
        if hashlib.sha256(key.encode()).digest() not in digests:
            return web.Response(status=401, text='{"error": "invalid_api_key"}')
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with request.app[session_key].request(
            request.method, origin + request.raw_path, headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False, auto_decompress=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP and k.lower() != "content-length":
                    response.headers.add(k, v)
            response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(65536):
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[session_key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[session_key].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


if __name__ == "__main__":
    port, origin, path = int(sys.argv[1]), sys.argv[2].rstrip("/"), sys.argv[3]
    with open(path) as fh:
        digests = {bytes.fromhex(line.strip()): "key" for line in fh if line.strip()}
    web.run_app(build(origin, digests), host="127.0.0.1", port=port,
                access_log=None, print=None, loop=uvloop.new_event_loop())
