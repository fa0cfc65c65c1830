"""The scrape: this process's numbers as Prometheus metric families.

One worker (``server.workers = 1``) answers from memory. Several share a
directory, fresh for each start of the supervisor: each worker writes its
numbers there every :data:`PUBLISH_INTERVAL` seconds (and once more as it
stops) in prometheus-client's multiprocess file format, and the worker that
is scraped writes its own first, then merges every file with the library's
``MultiProcessCollector``: every worker answers with the totals. The
supervisor marks a dead worker's files (``mark_process_dead``): its counters
still count, its gauges no longer do.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.utils import floatToGoString

from keygate import __version__
from keygate.gateway.metrics.counts import BUCKETS, Counts, Histogram

if TYPE_CHECKING:
    from keygate.gateway.state import Gateway

__all__ = ["Publisher", "mark_process_dead", "render_one"]

PUBLISH_INTERVAL: Final = 1.0  # seconds between a worker's writes of its numbers
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_LE: Final = (*(floatToGoString(b) for b in BUCKETS), "+Inf")


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # without _total
    kind: str  # counter | histogram | gauge
    help: str
    mode: str = ""  # a gauge's multiprocess mode: livesum | livemax


REQUESTS = Family("keygate_requests", "counter", "Requests answered, by route, method and status.")
DURATION = Family(
    "keygate_request_duration_seconds",
    "histogram",
    "Seconds from a request's head to the end of its answer, by route.",
)
UPSTREAM = Family(
    "keygate_upstream_duration_seconds",
    "histogram",
    "Seconds from sending a request upstream to its response head, by route.",
)
DECISIONS = Family(
    "keygate_auth_decisions", "counter", "Authentication decisions, by result and mode."
)
UPSTREAM_ERRORS = Family(
    "keygate_upstream_errors", "counter", "Upstream failures, by route and reason."
)
CACHE = Family("keygate_key_cache_lookups", "counter", "Key cache lookups, by result.")
IN_FLIGHT = Family("keygate_in_flight_requests", "gauge", "Requests in flight.", "livesum")
INVALIDATIONS = Family(
    "keygate_invalidations", "counter", "Change notices applied to memory, by source."
)
STORE_ERRORS = Family("keygate_store_errors", "counter", "Store queries that failed.")
WEBHOOKS = Family(
    "keygate_webhook_deliveries", "counter", "Webhook deliveries, by event and result."
)
WEBHOOK_QUEUE = Family(
    "keygate_webhook_queue_depth",
    "gauge",
    "Webhook deliveries waiting (pending deliveries and events not yet fanned out).",
    "livemax",  # every delivering process counts the same store-wide backlog
)
RATELIMIT_ERRORS = Family(
    "keygate_ratelimit_backend_errors",
    "counter",
    "Requests decided without the rate-limit backend (Redis unreachable).",
)
BUILD = Family("keygate_build_info", "gauge", "The running keygate's version.", "livemax")
FAMILIES: Final = (
    REQUESTS,
    DURATION,
    UPSTREAM,
    DECISIONS,
    UPSTREAM_ERRORS,
    CACHE,
    IN_FLIGHT,
    INVALIDATIONS,
    STORE_ERRORS,
    WEBHOOKS,
    WEBHOOK_QUEUE,
    RATELIMIT_ERRORS,
    BUILD,
)

# (family, sample name, labels, value)
Series = tuple[Family, str, dict[str, str], float]


def _histogram(family: Family, route: str, h: Histogram) -> Iterator[Series]:
    for le, count in zip(_LE, h.counts, strict=True):
        yield family, family.name + "_bucket", {"route": route, "le": le}, count
    yield family, family.name + "_sum", {"route": route}, h.sum


def in_flight(counts: Counts) -> int:
    """Requests being answered: aiohttp's and every edge's."""
    return counts.in_flight + sum(reader() for reader in counts.busy)


def series(gw: Gateway, counts: Counts) -> Iterator[Series]:
    """Every number of this process, as samples (histogram buckets not cumulative)."""
    total = REQUESTS.name + "_total"
    for (route, method, code), n in list(counts.requests.items()):
        yield REQUESTS, total, {"route": route, "method": method, "code": code}, n
    for route, h in list(counts.durations.items()):
        yield from _histogram(DURATION, route, h)
    for route, h in list(counts.upstream.items()):
        yield from _histogram(UPSTREAM, route, h)
    for (result, mode), n in list(counts.decisions.items()):
        yield DECISIONS, DECISIONS.name + "_total", {"result": result, "mode": mode}, n
    for (route, reason), n in list(counts.upstream_errors.items()):
        labels = {"route": route, "reason": reason}
        yield UPSTREAM_ERRORS, UPSTREAM_ERRORS.name + "_total", labels, n
    verifier = gw.verifier
    cache_total = CACHE.name + "_total"
    yield CACHE, cache_total, {"result": "hit"}, verifier.hits
    yield CACHE, cache_total, {"result": "miss"}, verifier.lookups
    yield CACHE, cache_total, {"result": "stale"}, verifier.stale_served
    yield IN_FLIGHT, IN_FLIGHT.name, {}, in_flight(counts)
    for source, n in gw.memory.invalidations.items():
        yield INVALIDATIONS, INVALIDATIONS.name + "_total", {"source": source}, n
    yield STORE_ERRORS, STORE_ERRORS.name + "_total", {}, gw.store.health.errors
    for (event, result), n in list(counts.webhooks.items()):
        yield WEBHOOKS, WEBHOOKS.name + "_total", {"event": event, "result": result}, n
    yield WEBHOOK_QUEUE, WEBHOOK_QUEUE.name, {}, counts.webhook_backlog
    errors = getattr(gw.limiter, "backend_errors", 0)
    yield RATELIMIT_ERRORS, RATELIMIT_ERRORS.name + "_total", {}, errors
    yield BUILD, BUILD.name, {"version": __version__}, 1


def families(rows: Iterable[Series]) -> list[Metric]:
    """Metric families from one process's samples (histograms made cumulative)."""
    found = {f.name: Metric(f.name, f.help, f.kind) for f in FAMILIES}
    running: dict[tuple[str, str], float] = {}
    for family, name, labels, value in rows:
        metric = found[family.name]
        if name.endswith("_bucket"):
            key = (family.name, labels["route"])
            value = running[key] = running.get(key, 0) + value
            metric.add_sample(name, labels, value)
            if labels["le"] == "+Inf":
                metric.add_sample(family.name + "_count", {"route": labels["route"]}, value)
            continue
        metric.add_sample(name, labels, value)
    return list(found.values())


class _Static:
    """The families of one process, for a registry (one process, or an empty
    family the multiprocess files cannot hold)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics


def render_one(gw: Gateway, counts: Counts) -> bytes:
    """The text exposition of one process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Static(families(series(gw, counts))))  # type: ignore[arg-type]
    return generate_latest(registry)


class Publisher:
    """One worker's numbers in the shared directory (prometheus-client's files)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        pid = os.getpid()
        self._files: dict[str, MmapedDict] = {}
        self._paths = {
            "counter": Path(directory) / f"counter_{pid}.db",
            "histogram": Path(directory) / f"histogram_{pid}.db",
            "livesum": Path(directory) / f"gauge_livesum_{pid}.db",
            "livemax": Path(directory) / f"gauge_livemax_{pid}.db",
        }
        self._keys: dict[tuple[str, str, tuple[tuple[str, str], ...]], str] = {}

    def publish(self, gw: Gateway, counts: Counts) -> None:
        for family, name, labels, value in series(gw, counts):
            self._write(family, name, labels, value)

    def _write(self, family: Family, name: str, labels: dict[str, str], value: float) -> None:
        kind = family.mode or family.kind
        file = self._files.get(kind)
        if file is None:
            file = self._files[kind] = MmapedDict(str(self._paths[kind]))
        label_key = tuple(labels.items())
        key = self._keys.get((family.name, name, label_key))
        if key is None:
            key = mmap_key(family.name, name, list(labels), list(labels.values()), family.help)
            self._keys[(family.name, name, label_key)] = key
        file.write_value(key, float(value), 0.0)

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()

    def render(self, gw: Gateway, counts: Counts) -> bytes:
        """The totals of every worker, this one's numbers written first."""
        self.publish(gw, counts)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(self.directory))  # type: ignore[arg-type]
        text = generate_latest(registry)
        # The scrape being answered is in flight in this answer, and over once
        # it is sent: the file the other workers merge until this one's next
        # publish must not count it, or their scrapes report one too many.
        self._write(IN_FLIGHT, IN_FLIGHT.name, {}, max(in_flight(counts) - 1, 0))
        return text


class _Merged:
    """Every worker's files, merged by prometheus-client; a family no file holds
    (no sample yet) still declared."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> list[Metric]:
        files = [str(p) for p in Path(self._directory).glob("*.db")]
        metrics = list(MultiProcessCollector.merge(files, accumulate=True))
        names = {m.name for m in metrics}
        return metrics + [Metric(f.name, f.help, f.kind) for f in FAMILIES if f.name not in names]
