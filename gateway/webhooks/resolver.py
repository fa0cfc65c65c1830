"""The connect-time half of the SSRF guard: a resolver that refuses what it may not reach.

aiohttp's connector asks its resolver for every host name it connects to;
this one asks the real resolver, then drops every address
:func:`ssrf.address_problem` refuses, and fails the connection when none is
left. So a name that resolved to a global address when the URL was set but
to 127.0.0.1 now (DNS rebinding) is not reached. IP literals never reach a
resolver (aiohttp connects to them directly): the deliverer judges those
itself before connecting (``deliverer.py``).
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult

from keygate.gateway.webhooks import ssrf


class RefusedAddress(OSError):
    """Every address of a receiver's host was refused (the message says why)."""


class GuardedResolver(AbstractResolver):
    def __init__(self, inner: AbstractResolver, *, allow_private: bool) -> None:
        self._inner = inner
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        problem = "resolves to no address"
        for entry in found:
            try:
                address = ipaddress.ip_address(entry["host"])
            except ValueError:
                continue
            why = ssrf.address_problem(address, allow_private=self._allow_private)
            if why is None:
                kept.append(entry)
            else:
                problem = why
        if not kept:
            raise RefusedAddress(f"the receiver's host {problem}")
        return kept

    async def close(self) -> None:
        await self._inner.close()
