"""Typed, frozen settings (SPEC §2). Built only by :mod:`config.loader`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: str = "127.0.0.1:8080"
    workers: int = 1
    admin_prefix: str = "/_keygate"
    # Peers whose X-Forwarded-For we believe when logging/auditing the client.
    trusted_proxies: tuple[Network, ...] = ()
    # Slowloris bound: a request head must arrive completely within this time.
    header_timeout: float = 10.0
    # A request body that stalls this long between chunks is aborted. Also
    # bounds (at most 10 s) how long a refused request's body is drained.
    body_idle_timeout: float = 30.0
    max_header_count: int = 100
    max_header_bytes: int = 16384
    max_line_bytes: int = 8190
    # Seconds a graceful stop waits for in-flight requests.
    shutdown_timeout: float = 30.0
    access_log: bool = True
    # Serve plain proxied requests with keygate's own HTTP protocol (gateway.edge);
    # off, aiohttp's server handles every request.
    fast_path: bool = True

    @property
    def host(self) -> str:
        host, _, _ = self.listen.rpartition(":")
        return host.strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str = "sqlite:///keygate-data/keygate.db"
    pool_size: int = 10
    # How often workers look for changes made by other processes or nodes.
    change_poll_interval: float = 0.2


@dataclass(frozen=True, slots=True)
class AuthSettings:
    key_prefix: str = "kg"
    sources: tuple[str, ...] = ("authorization", "x-api-key")
    cache_size: int = 100_000
    cache_ttl: float = 60.0
    negative_cache_ttl: float = 5.0
    last_used_flush_interval: float = 1.0
    max_keys_per_user: int = 10
    # While authenticated requests are in flight, a connection whose request
    # was refused for its key (401) has its next request read only this many
    # seconds later: a client failing to authenticate cannot take the CPU
    # from clients that succeed. 0 turns it off.
    refusal_delay: float = 0.02


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    prefix: str
    upstream: str
    strip_prefix: bool = False
    public: bool = False
    timeout: float = 30.0
    # None: no limit. Declared bodies over it get 413 before anything is sent.
    max_body_bytes: int | None = None
    # Concurrent upstream exchanges; beyond it a fast 503 upstream_busy.
    max_connections: int = 1000
    # "check": a method override (header, query or form field) must name a
    # method the key may use too; "ignore": overrides are not looked at
    # (docs/security.md says when that is safe).
    method_override: str = "check"
    # Remove the headers frameworks read as "serve this path instead"
    # (X-Original-URL and kin, gateway.headers.REROUTING).
    strip_rerouting_headers: bool = True


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    routes: tuple[Route, ...] = ()
    # Where the settings came from, for messages ("<defaults>" when no file).
    source: str = "<defaults>"
