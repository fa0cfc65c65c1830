"""Live reload (docs/reference.md#reloading-the-configuration): SIGHUP re-reads the config.

:func:`check` is what a configuration must pass beyond loading — a route
table that can be built, TLS files that load — so ``keygate check-config``,
``keygate serve`` and a reload refuse the same files with the same one line.

:class:`Reloader` applies a new file to a running worker without closing a
connection: new requests take the new routes, limits, key sources and
certificates; requests in flight finish on the route they resolved
(:meth:`~keygate.gateway.state.Gateway.reconfigure`); open connections keep
their TLS session and their limits. An invalid file is refused with one log
line and the running configuration stays. Settings a running process is built
around (:mod:`keygate.config.reload`) keep their running values, each change
named in a warning.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from aiohttp import web

from keygate.config import ConfigError
from keygate.config.reload import reloadable
from keygate.config.settings import Settings
from keygate.gateway.auth.policy import RouteTable
from keygate.gateway.http.server import FrontDoor
from keygate.gateway.http.tls import ListenerTls, server_context
from keygate.gateway.state import gateway_key

log = logging.getLogger("keygate")


def check(settings: Settings) -> ssl.SSLContext | None:
    """What ``keygate serve`` would refuse ``settings`` for, found without starting:
    raises ConfigError (one line). Returns the listener's SSL context, if TLS is on."""
    try:
        RouteTable(settings.routes)
    except ValueError as exc:
        raise ConfigError(f"{settings.source}: routes: {exc}") from None
    return server_context(settings)


class Reloader:
    """Re-read the configuration (``load``) into a running ``runner``; called on SIGHUP."""

    def __init__(
        self, runner: web.AppRunner, load: Callable[[], Settings], tls: ListenerTls | None
    ) -> None:
        self._runner = runner
        self._load = load
        self._tls = tls

    def __call__(self) -> bool:
        """Apply the configuration file as it is now; False (logged) if it is refused."""
        gw = self._runner.app[gateway_key]
        try:
            loaded = self._load()
            context = check(loaded)  # the whole file, restart-only settings too
        except ConfigError as exc:
            log.error("config reload refused, the running configuration stays: %s", exc)
            return False
        settings, held = reloadable(gw.settings, loaded)
        if settings.server.tls_cert_file != loaded.server.tls_cert_file:
            context = None  # TLS turned on or off: held for a restart
        gw.reconfigure(settings)
        front = self._runner.server
        if isinstance(front, FrontDoor):
            front.reconfigure(settings)
        if self._tls is not None and context is not None:
            self._tls.replace(context)
        for name in held:
            log.warning("config reload: %s changed; that takes a restart", name)
        log.info(
            "config reloaded from %s: %d route%s",
            settings.source,
            len(settings.routes),
            "" if len(settings.routes) == 1 else "s",
        )
        return True
