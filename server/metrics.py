"""Prometheus metrics over HTTP (``--metrics-port``), read at scrape time.

Nothing here runs per request. The counters the handler keeps anyway
(``Handler.op_counts``, ``Handler.error_counts``) and the store's figures
are read when Prometheus scrapes, by a custom collector on the HTTP
server's thread. The one thing measured for metrics alone is the latency
histogram, and it is measured per batch, not per request: the loop times
each batch it answers (one clock read per batch) and every request in it is
counted with that batch's duration. That is an upper bound on each
request's own service time inside the server (from taking the batch off
the socket to handing its replies back; network time excluded).

Exported families (all prefixed ``memlookup_``):

* ``operations_total{op}`` requests decoded, by operation;
* ``errors_total{status}`` error replies, by status name;
* ``request_duration_seconds`` histogram (per batch, as above);
* ``batches_total``; ``keys``; ``keys_with_ttl``; ``expired_keys_total``;
  ``memory_bytes`` (the store's estimate); ``resident_memory_bytes``;
  ``uptime_seconds``;
* ``<section>_<figure>`` for every number (and flag, 1 for true) in each
  extra section of ``stats`` the server has: ``output`` (the output budgets),
  ``persistence`` (its lag among them), ``memory`` with ``--max-memory``,
  ``auth``.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from server.handler import Handler, rss_bytes

log = logging.getLogger(__name__)

#: Upper bounds of the latency histogram, in seconds (then +Inf).
LATENCY_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class BatchLatency:
    """A histogram of batch durations, each weighted by the batch's request count.

    ``observe`` runs on the server loop's thread; a scrape reads a copy.
    Plain list arithmetic (no lock): a scrape may see one batch half counted,
    which Prometheus tolerates.
    """

    def __init__(self, bounds_s: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds_s = bounds_s
        self.counts = [0] * (len(bounds_s) + 1)
        self.sum_s = 0.0
        self.batches = 0

    def observe(self, requests: int, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds_s, seconds)] += requests
        self.sum_s += seconds * requests
        self.batches += 1

    def cumulative(self) -> list[tuple[str, float]]:
        rows: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, self.bounds_s), "+Inf"), list(self.counts), strict=True):
            running += count
            rows.append((bound, running))
        return rows


class MetricsCollector:
    """Reads a handler's figures when scraped."""

    def __init__(self, handler: Handler, latency: BatchLatency) -> None:
        self.handler = handler
        self.latency = latency
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        handler, store = self.handler, self.handler.store
        ops = CounterMetricFamily("memlookup_operations", "Requests decoded, by operation.", labels=["op"])
        for op, count in _snapshot(handler.op_counts).items():
            ops.add_metric([op], count)
        yield ops
        errors = CounterMetricFamily("memlookup_errors", "Error replies, by status.", labels=["status"])
        for status, count in _snapshot(handler.error_counts).items():
            errors.add_metric([status.lower()], count)
        yield errors
        latency = HistogramMetricFamily(
            "memlookup_request_duration_seconds",
            "Time the server spent on the batch each request was answered in (an upper bound per request).",
        )
        latency.add_metric([], self.latency.cumulative(), self.latency.sum_s)
        yield latency
        yield CounterMetricFamily("memlookup_batches", "Batches of requests answered.", value=self.latency.batches)
        yield GaugeMetricFamily("memlookup_keys", "Keys in the store.", value=len(store))
        yield GaugeMetricFamily("memlookup_keys_with_ttl", "Keys with an expiry.", value=store.keys_with_ttl)
        yield CounterMetricFamily("memlookup_expired_keys", "Keys removed by expiry.", value=store.expired_total)
        yield GaugeMetricFamily("memlookup_memory_bytes", "Estimated bytes held by keys and values.",
                                value=store.memory_bytes)
        yield GaugeMetricFamily("memlookup_resident_memory_bytes", "Resident memory of the server process.",
                                value=rss_bytes())
        yield GaugeMetricFamily("memlookup_uptime_seconds", "Seconds since the server started.",
                                value=time.time() - self.started)
        for name, section in handler.sections.items():
            yield from _section(name, section)


def _snapshot(counter: dict[str, int]) -> dict[str, int]:
    """A copy of a dict the loop thread may grow meanwhile."""
    for _ in range(10):
        try:
            return dict(counter)
        except RuntimeError:  # changed size during iteration
            continue
    return {}


def _section(name: str, section: Callable[[], dict[str, Any]]) -> Iterator[Metric]:
    """Every number in a stats section, as ``memlookup_<name>_<figure>`` gauges."""
    try:
        figures: dict[str, Any] = section()
    except Exception:  # a scrape must never take the server down
        log.exception("reading the %s stats section for metrics", name)
        return
    for figure, value in figures.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield GaugeMetricFamily(f"memlookup_{name}_{figure}", f"The {figure} figure of {name} stats.",
                                    value=value)
        elif isinstance(value, bool):
            yield GaugeMetricFamily(f"memlookup_{name}_{figure}", f"The {figure} flag of {name} stats (1 true).",
                                    value=int(value))


def serve_metrics(handler: Handler, latency: BatchLatency, bind: str, port: int) -> WSGIServer:
    """Start the HTTP endpoint (``/metrics``) on a daemon thread; returns its server
    (``server_port`` is the port bound, useful with port 0; ``shutdown()`` stops it).

    ``latency`` is the histogram the loop feeds (its ``after_batch`` hook).

    Raises:
        OSError: the port cannot be bound.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(handler, latency))
    addr = {"*": "0.0.0.0"}.get(bind, bind)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    thread.name = "metrics"
    return server


__all__ = ["BatchLatency", "MetricsCollector", "serve_metrics"]
