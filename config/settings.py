"""Typed, frozen settings (docs/reference.md#configuration). Built only by :mod:`config.loader`.

Each setting is declared once, here: its type, its default, and in its
``Annotated`` metadata (:func:`config.declare.rule`) what a valid value is and
how a bad one is worded. The loader judges TOML, ``KEYGATE_*`` and
command-line values against these declarations; what spans several settings
(duplicate routes, a route under the admin prefix) and the normalisation of
route prefixes and upstream URLs stay in the loader. Annotations are real
objects (no ``from __future__ import annotations``), so nothing is evaluated.
"""

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from keygate.config.declare import END, Name, rule

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SOURCE_RE = re.compile(r"^(authorization|x-api-key|basic|query:[A-Za-z0-9_.-]{1,64})" + END)

AtLeastOne = Annotated[int, rule(ge=1)]
Positive = Annotated[float, rule(gt=0)]


def _listen(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return "must be host:port, for example 127.0.0.1:8080"
    return None


def _admin_prefix(p: str) -> str | None:
    if not p.startswith("/") or p == "/" or p.endswith("/") or "//" in p:
        return "must be a path like /_keygate (not '/')"
    if any(seg in (".", "..") for seg in p.split("/")) or "%" in p:
        return "must be a plain, normalised path"
    return None


def _networks(value: Any) -> tuple[tuple[Network, ...] | None, str | None]:
    if not isinstance(value, list | tuple):
        return None, "must be a list"
    try:
        return tuple(ipaddress.ip_network(str(v), strict=False) for v in value), None
    except ValueError:
        return None, "not an IP network (CIDR)"


def _sources(value: tuple[str, ...]) -> str | None:
    if not value:
        return "must name at least one source"
    for s in value:
        if not SOURCE_RE.match(s):
            return f"unknown source {s!r} (use authorization, x-api-key, basic or query:<name>)"
    if len(set(value)) != len(value):
        return "lists a source twice"
    return None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: Annotated[str, rule(check=_listen)] = "127.0.0.1:8080"
    workers: AtLeastOne = 1
    admin_prefix: Annotated[str, rule(check=_admin_prefix)] = "/_keygate"
    # Peers whose X-Forwarded-For we believe when logging/auditing the client.
    trusted_proxies: Annotated[tuple[Network, ...], rule(decode=_networks)] = ()
    # Slowloris bound: a request head must arrive completely within this time.
    header_timeout: Positive = 10.0
    # A request body that stalls this long between chunks is aborted. Also
    # bounds (at most 10 s) how long a refused request's body is drained.
    body_idle_timeout: Positive = 30.0
    max_header_count: AtLeastOne = 100
    max_header_bytes: AtLeastOne = 16384
    max_line_bytes: AtLeastOne = 8190
    # Seconds a graceful stop waits for in-flight requests.
    shutdown_timeout: Positive = 30.0
    access_log: bool = True
    # Serve plain proxied requests with keygate's own HTTP protocol (gateway.edge);
    # off, aiohttp's server handles every request.
    fast_path: bool = True
    # After the edge has written, keep the event loop polling (no sleep) this
    # many microseconds for the next event: a worker that never sleeps between
    # back-to-back requests skips two wake-ups per request, at the price of
    # CPU while traffic flows (docs/architecture.md#busy-polling). 0: off.
    busy_poll_us: Annotated[
        int, rule(ge=0, le=10_000, reason="must be from 0 (off) to 10000 microseconds")
    ] = 0
    # TLS on the listener (docs/reference.md#tls): PEM files, both or neither;
    # reloaded on SIGHUP. The CA bundle turns on mutual TLS: a client must
    # present a certificate it signed.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None

    @property
    def host(self) -> str:
        host, _, _ = self.listen.rpartition(":")
        return host.strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: Annotated[
        str,
        rule(
            pattern=r"^(sqlite|postgresql|postgres)://",
            reason="must start with sqlite://, postgresql:// or postgres://",
        ),
    ] = "sqlite:///keygate-data/keygate.db"
    pool_size: AtLeastOne = 10
    # How often workers look for changes made by other processes or nodes.
    change_poll_interval: Positive = 0.2
    # SQLite: read a cache miss's key on the event loop (a read-only connection,
    # microseconds when the file is in memory; a cold page waits for the disk
    # with the loop). Off: on the reader thread (docs/architecture.md#cache-misses).
    sqlite_loop_reads: bool = True


@dataclass(frozen=True, slots=True)
class AuthSettings:
    key_prefix: Annotated[
        str, rule(pattern=r"^[A-Za-z0-9]{1,16}" + END, reason="must be 1-16 letters or digits")
    ] = "kg"
    sources: Annotated[tuple[str, ...], rule(check=_sources)] = ("authorization", "x-api-key")
    cache_size: AtLeastOne = 100_000
    cache_ttl: Positive = 60.0
    # While the store does not answer, a cached key past cache_ttl stays
    # usable this many seconds more (Kong's db_resurrect_ttl, 30 s): a store
    # restart or failover does not fail the traffic of keys in use. The price:
    # a change this node cannot hear may apply up to cache_ttl + this late
    # (README "What is guaranteed"). 0 turns it off.
    stale_if_error: Annotated[
        float, rule(ge=0, le=3600, reason="must be from 0 (off) to 3600 seconds")
    ] = 30.0
    negative_cache_ttl: Positive = 5.0
    last_used_flush_interval: Positive = 1.0
    # A key's last_used_at is rewritten only when the new stamp is at least this
    # much newer than the stored one: one row write per key per resolution,
    # whatever the number of workers and nodes. 0: every flush writes.
    last_used_resolution: Annotated[
        float, rule(ge=0, le=86400, reason="must be from 0 to 86400 seconds")
    ] = 60.0
    max_keys_per_user: AtLeastOne = 10
    # While authenticated requests are in flight, a connection whose request
    # was refused for its key (401) has its next request read only this many
    # seconds later: a client failing to authenticate cannot take the CPU
    # from clients that succeed. 0 turns it off.
    refusal_delay: Annotated[
        float, rule(ge=0, le=10, reason="must be from 0 (off) to 10 seconds")
    ] = 0.02


def _redis_url(value: str) -> str | None:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        return "must start with redis://, rediss:// or unix://"
    return None


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Per-key rate limits and quotas (docs/reference.md#rate-limits-quotas-and-ip-allowlists)."""

    # "local": in memory, per process; "redis": exact across workers and nodes.
    backend: Literal["local", "redis"] = "local"
    # May carry a password: never echoed or logged.
    redis_url: Annotated[str, rule(check=_redis_url)] = "redis://127.0.0.1:6379/0"
    # Names of keygate's Redis keys start with this (several gateways may share a Redis).
    redis_prefix: Annotated[
        str,
        rule(
            pattern=r"^[A-Za-z0-9_.:-]{1,64}" + END,
            reason="must be 1-64 letters, digits, '_', '.', ':' or '-'",
        ),
    ] = "keygate"
    # Seconds one Redis exchange may take before it counts as a failure.
    redis_timeout: Annotated[float, rule(gt=0, le=10, reason="must be from 0 to 10 seconds")] = (
        0.5
    )
    # Redis unreachable: true lets requests through (logged, counted); false
    # answers 503 ratelimit_unavailable.
    fail_open: bool = True
    # Which RateLimit header fields answers carry: the IETF draft's
    # (RateLimit, RateLimit-Policy), the legacy X-RateLimit-*, both, or none.
    headers: Literal["draft", "legacy", "both", "none"] = "draft"


# The retry schedule of docs/webhooks.md: seconds after each failed attempt
# before the next; after the last, the delivery is abandoned.
DEFAULT_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
EVENT_FILTER = r"^(\*|key\.\*|key\.[a-z_]{1,32})" + END


def _schedule(value: tuple[float, ...]) -> str | None:
    if not 1 <= len(value) <= 20 or any(not 0 < v <= 86400 for v in value):
        return "must list 1 to 20 delays, each from 0 to 86400 seconds"
    return None


def _whsec(value: str) -> str | None:
    from base64 import b64decode
    from binascii import Error

    if not value.startswith("whsec_"):
        return "must start with whsec_"
    try:
        raw = b64decode(value[6:], validate=True)
    except (Error, ValueError):
        return "must be whsec_ followed by base64"
    if not 24 <= len(raw) <= 64:
        return "must hold 24 to 64 bytes of key"
    return None


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """An operator's endpoint that hears about every key ([[webhooks.endpoints]])."""

    url: Annotated[
        str, rule(max_length=2048, pattern=r"^https?://", reason="must be an http(s) URL")
    ]
    # Never echoed or logged.
    secret: Annotated[str, rule(check=_whsec)]
    # "key.*" (every key event), "*", or exact names ("key.revoked").
    events: Annotated[
        tuple[Annotated[str, rule(pattern=EVENT_FILTER)], ...],
        rule(reason='must list event names like "key.*" or "key.revoked"'),
    ] = ("key.*",)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Signed notices about keys (docs/webhooks.md)."""

    # Plain http:// receivers (https only when false).
    allow_http: bool = False
    # Receivers at non-global addresses (loopback, RFC 1918, ...); link-local
    # and cloud metadata addresses are refused whatever this says.
    allow_private: bool = False
    # Seconds one delivery attempt may take, connect to last byte read.
    timeout: Annotated[float, rule(gt=0, le=120, reason="must be from 0 to 120 seconds")] = 15.0
    # Seconds between two traffic notices of one type for one key.
    cooldown: Annotated[float, rule(ge=0, le=86400, reason="must be from 0 to 86400 seconds")] = (
        300.0
    )
    # Seconds between attempts (docs/webhooks.md#retries).
    retry_schedule: Annotated[tuple[float, ...], rule(check=_schedule)] = DEFAULT_RETRY_SCHEDULE
    # How often the deliverer looks for work when nothing woke it.
    poll_interval: Annotated[float, rule(gt=0, le=60, reason="must be from 0 to 60 seconds")] = (
        1.0
    )
    endpoints: tuple[WebhookEndpoint, ...] = ()


@dataclass(frozen=True, slots=True)
class ForwardAuthSettings:
    """``{admin_prefix}/auth`` for proxies that ask keygate (docs/forward-auth.md)."""

    # Off by default: the endpoint believes headers naming another request,
    # which only a deliberately configured proxy should send.
    enabled: bool = False
    # nginx's auth_request relays only 2xx, 401 and 403 (anything else is its
    # 500): every other client-side refusal is answered 403 with
    # X-Keygate-Error naming it (a 429 keeps its Retry-After).
    nginx_compat: bool = False


_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """``{admin_prefix}/metrics`` in Prometheus' text format (docs/reference.md#metrics)."""

    enabled: bool = True
    # Peers that may scrape without a key; anyone else needs an admin key.
    allow: Annotated[tuple[Network, ...], rule(decode=_networks)] = _LOOPBACK


@dataclass(frozen=True, slots=True)
class Route:
    name: Name
    # Normalised by the loader (config.loader.normalise_prefix, check_upstream).
    prefix: str
    upstream: str
    strip_prefix: bool = False
    public: bool = False
    timeout: Positive = 30.0
    # None: no limit. Declared bodies over it get 413 before anything is sent.
    max_body_bytes: Annotated[int, rule(ge=0)] | None = None
    # Concurrent upstream exchanges; beyond it a fast 503 upstream_busy.
    max_connections: AtLeastOne = 1000
    # "check": a method override (header, query or form field) must name a
    # method the key may use too; "ignore": overrides are not looked at
    # (docs/security.md says when that is safe).
    method_override: Literal["check", "ignore"] = "check"
    # Remove the headers frameworks read as "serve this path instead"
    # (X-Original-URL and kin: keygate.gateway.request.headers.REROUTING).
    strip_rerouting_headers: bool = True
    # Forward header names with "_" in them (nginx's underscores_in_headers);
    # off, they are dropped: WSGI servers read "_" as "-" and some route on
    # a SCRIPT_NAME header.
    underscores_in_headers: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    ratelimit: RateLimitSettings = field(default_factory=RateLimitSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    forward_auth: ForwardAuthSettings = field(default_factory=ForwardAuthSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    routes: tuple[Route, ...] = ()
    # Where the settings came from, for messages ("<defaults>" when no file).
    source: str = "<defaults>"
