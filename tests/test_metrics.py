"""Prometheus metrics: a real server with --metrics-port, scraped over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from client import Client, InvalidRequestError, NotAnIntegerError
from common.limits import MAX_PEER_OUTPUT_BYTES
from server.handler import Handler
from server.metrics import BatchLatency, MetricsCollector
from server.store import Store
from tests.servers import ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_scrape_counts_operations_errors_keys_and_latency(start_server):
    port = free_port()
    server = start_server("--metrics-port", str(port))
    assert server.wait_for_log(f"metrics on http://127.0.0.1:{port}/metrics")
    with Client(server.node, timeout_s=2.0) as table:
        for i in range(5):
            table.set(f"k{i}", "v" * 100)
        table.get("k1")
        try:
            table.incr("k2")  # "vvv..." is not an integer
        except NotAnIntegerError:
            pass
        try:
            table.set("k", "v", ttl_s=-1)
        except InvalidRequestError:
            pass  # caught by the client: never sent
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = samples(text)
    assert found[("memlookup_operations_total", (("op", "set"),))] == 5
    assert found[("memlookup_operations_total", (("op", "get"),))] == 1
    assert found[("memlookup_operations_total", (("op", "incr"),))] == 1
    assert found[("memlookup_errors_total", (("status", "not_integer"),))] == 1
    assert found[("memlookup_keys", ())] == 5
    assert found[("memlookup_memory_bytes", ())] > 500
    assert found[("memlookup_resident_memory_bytes", ())] > 0
    # Every request answered so far is in the histogram (7 requests).
    assert found[("memlookup_request_duration_seconds_count", ())] == 7
    assert found[("memlookup_request_duration_seconds_bucket", (("le", "+Inf"),))] == 7
    assert found[("memlookup_batches_total", ())] >= 1
    # Every extra section of stats, as gauges: the output budgets among them.
    assert found[("memlookup_output_max_peer_output_bytes", ())] == MAX_PEER_OUTPUT_BYTES
    assert found[("memlookup_output_disconnected_peers", ())] == 0
    assert found[("memlookup_persistence_enabled", ())] == 0
    assert found[("memlookup_auth_accepted_connections", ())] >= 1


def test_metrics_are_off_by_default_and_a_bad_port_is_refused(start_server):
    server = start_server()
    assert "metrics on" not in server.log
    result = run_cli_server("--metrics-port", "70000")
    assert result.returncode == 2 and "metrics port 70000" in result.stderr


def run_cli_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)


def test_a_persistence_section_is_exported_when_present():
    handler = Handler(Store(), sections={"persistence": lambda: {"lag_s": 0.25, "enabled": True, "mode": "always"}})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(handler, BatchLatency()))
    found = samples(generate_latest(registry).decode())
    assert found[("memlookup_persistence_lag_s", ())] == 0.25
    assert found[("memlookup_persistence_enabled", ())] == 1
    assert not any(name.startswith("memlookup_persistence_mode") for name, _ in found)


def test_batch_latency_weights_each_batch_by_its_requests():
    latency = BatchLatency(bounds_s=(0.001, 0.01))
    latency.observe(3, 0.0005)
    latency.observe(2, 0.005)
    latency.observe(1, 5.0)
    assert latency.cumulative() == [("0.001", 3), ("0.01", 5), ("+Inf", 6)]
    assert latency.batches == 3
    assert abs(latency.sum_s - (3 * 0.0005 + 2 * 0.005 + 5.0)) < 1e-9


def test_a_persistent_server_exports_its_lag(start_server, tmp_path):
    port = free_port()
    server = start_server("--metrics-port", str(port), "--data-dir", str(tmp_path), "--fsync", "always")
    with Client(server.node, timeout_s=2.0) as table:
        table.set("norway", "oslo")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        found = samples(response.read().decode())
    assert found[("memlookup_persistence_enabled", ())] == 1
    assert found[("memlookup_persistence_pending_bytes", ())] == 0  # fsync always: nothing waits
    assert found[("memlookup_persistence_journal_bytes", ())] > 0
    assert found[("memlookup_persistence_last_fsync_age_s", ())] >= 0
