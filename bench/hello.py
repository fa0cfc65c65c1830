"""Reference: aiohttp + uvloop answering "hello" itself (no key check, no forwarding).

python bench/hello.py PORT
"""

import sys

import uvloop
from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
                loop=uvloop.new_event_loop())
