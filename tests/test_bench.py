"""The load generator and the comparison script, run for real (small sizes; no timing asserted)."""

import json
import shutil
import subprocess
import sys

import pytest

from bench.compare import write_section
from client import Client
from tests.servers import ROOT


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_json_has_the_fields_and_the_counts_match_the_server(server):
    result = run_bench(server.node, "-c", "2", "-n", "1001", "--mix", "get=1,set=1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["requests"] == 1001 and report["errors"] == 0 and report["clients"] == 2
    assert report["requests_per_s"] > 0
    lat = report["latency_us"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    with Client(server.node) as table:
        ops = table.stats()["ops"]
    # each client pings once to connect before the clock starts
    assert ops.get("get", 0) + ops.get("set", 0) == 1001 and ops["ping"] == 2


def test_pipelined_batched_mix_prints_the_text_report(server):
    result = run_bench(server.node, "-c", "1", "-n", "300", "-P", "16", "-b", "5",
                       "--mix", "mget=1,mset=1,incr=1,del=1,exists=1,ping=1", "--prefill", "-r", "50")
    assert result.returncode == 0, result.stderr
    assert "300 requests in" in result.stdout and ", 0 errors" in result.stdout
    assert "latency (us): p50" in result.stdout and "p99.9" in result.stdout
    with Client(server.node) as table:
        assert table.stats()["keys"] >= 50  # the prefill


def test_a_dead_node_fails_with_a_message(start_server):
    server = start_server()
    node = server.node
    server.stop()
    result = run_bench(node, "-n", "10", "-c", "1", "--timeout", "0.3")
    assert result.returncode == 1
    assert f"error: a client failed: NotListeningError: connection refused: is memlookup-server running on {node}?" \
        in result.stderr


def test_bad_mix_is_a_usage_error():
    result = run_bench("--mix", "get=1,frobnicate=2")
    assert result.returncode == 2 and "unknown operation 'frobnicate'" in result.stderr


def test_write_section_replaces_only_the_speed_section(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Speed\n\nold\n\n## Persistence\n\nkept\n")
    write_section("## Speed\n\nnew\n", doc)
    assert doc.read_text() == "# Benchmarks\n\n## Speed\n\nnew\n\n## Persistence\n\nkept\n"
    write_section("## Speed\n\nnewer\n", doc)
    assert "newer" in doc.read_text() and "kept" in doc.read_text() and "new\n\n## Speed" not in doc.read_text()


@pytest.mark.slow
def test_compare_quick_mode_produces_the_table(tmp_path):
    assert shutil.which("redis-server"), ".ci/run installs redis-server"
    doc = tmp_path / "BENCHMARKS.md"
    result = subprocess.run([sys.executable, "-m", "bench.compare", "--quick", "--doc", str(doc)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    text = doc.read_text()
    for row in ("1. lockstep get", "2. four processes", "3. capacity", "4. bulk load", "5. memory per key",
                "6. one-shot CLI get", "7. restart with 20,000 keys, from the snapshot",
                "7. restart with 20,000 keys, from the journal"):
        assert row in text


def test_requests_packed_per_message_are_all_counted(server):
    result = run_bench(server.node, "-c", "1", "-n", "500", "-P", "32", "-m", "8", "--mix", "get=1,set=1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["requests"], report["errors"], report["per_message"]) == (500, 0, 8)
    with Client(server.node) as table:
        ops = table.stats()["ops"]
    assert ops.get("get", 0) + ops.get("set", 0) == 500 and ops["batch"] == 63  # 500 / 8, rounded up


@pytest.mark.slow
def test_cores_quick_mode_puts_both_cores_side_by_side():
    result = subprocess.run([sys.executable, "-m", "bench.cores", "--quick"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for row in ("| lockstep get through Client,", "| lockstep set through bare REQ socket,", "| -c 2 -P 64 -m 1,",
                "| -c 2 -P 64 -m 16,"):
        assert row in result.stdout


def test_capacity_counts_every_request_the_server_answered_and_its_cpu_share(start_server):
    server = start_server()
    result = subprocess.run([sys.executable, "-m", "bench.capacity", server.node, "-c", "2", "-P", "32", "-m", "8",
                             "--duration", "0.5", "-r", "1000", "--server-pid", str(server.proc.pid)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    with Client(server.node) as table:
        ops = table.stats()["ops"]
    assert report["requests"] > 0 and report["refused"] == 0
    # each client pings once to connect before the clock starts
    assert ops.get("get", 0) + ops.get("set", 0) == report["requests"] and ops["ping"] == 2
    assert ops["batch"] * 8 == report["requests"]
    assert 0 < report["server_cpu"] <= 1.5


def test_bulk_trees_loads_every_line_into_both_trees_and_prints_the_medians():
    # This tree against itself: the script's work, not a figure, is what is checked.
    result = subprocess.run([sys.executable, "bench/bulk_trees.py", "--before", str(ROOT), "--pairs", "3000",
                             "--rounds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 rounds of 3,000 lines into each tree in turn" in result.stdout
    assert "| wall s |" in result.stdout and "| server CPU s |" in result.stdout
