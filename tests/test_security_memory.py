"""--max-memory and --eviction against real servers: refusals, eviction order, real RSS."""

from __future__ import annotations

import random
import subprocess
import sys

import msgpack
import pytest

from client import Client, OutOfMemoryError
from server.memory import parse_bytes
from tests.hostile import read_status_kib
from tests.servers import ROOT, run_cli
from tests.tables import TABLES

VALUE = "v" * 1000


@pytest.mark.parametrize("text, expected", [
    ("5000", 5000), ("100mb", 100 * 1024**2), ("100MB", 100 * 1024**2), ("2gb", 2 * 1024**3),
    ("1k", 1000), ("1kb", 1024), ("3m", 3_000_000), ("1gib", 1024**3), ("0", 0), ("7b", 7),
])
def test_sizes_are_read_like_redis_maxmemory(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "mb", "-5mb", "1.5gb", "10 parsecs", "5xb"])
def test_a_size_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_bytes(text)


def _fill(table: Client, prefix: str, batches: int, ttl_s: float | None = None) -> None:
    for batch in range(batches):
        table.mset({f"{prefix}:{batch}:{i}": VALUE for i in range(50)}, ttl_s=ttl_s)


def test_noeviction_refuses_writes_but_reads_and_deletes_work(start_server):
    server = start_server("--max-memory", "40mb", "--eviction", "noeviction")
    with Client(server.node, timeout_s=5) as table:
        table.set("kept", "value")
        with pytest.raises(OutOfMemoryError, match="out of memory"):
            _fill(table, "fill", 10_000)
        with pytest.raises(OutOfMemoryError):  # then fill the last gap key by key
            for i in range(10_000):
                table.set(f"single:{i}", VALUE)
        keys = table.stats()["keys"]
        assert table.get("kept") == "value"
        assert table.mget(["kept", "fill:0:0"]) == ["value", VALUE]
        with pytest.raises(OutOfMemoryError):
            table.set("one-more", VALUE)
        cli = run_cli(server.node, "set", "one-more", VALUE)
        assert (cli.returncode, cli.stderr.startswith("error: out of memory")) == (3, True)
        assert table.stats()["keys"] == keys  # nothing was evicted or half-written
        for i in range(50):
            assert table.delete(f"fill:0:{i}")
        assert table.set("one-more", VALUE)
        memory = table.stats()["memory"]
        assert memory["evicted_keys"] == 0 and memory["refused_writes"] >= 3
        assert memory["used_bytes"] <= memory["max_memory_bytes"]


def test_allkeys_lru_evicts_the_least_recently_used_first(start_server):
    server = start_server("--max-memory", "40mb", "--eviction", "allkeys-lru")
    with Client(server.node, timeout_s=5) as table:
        old = [f"old:{i}" for i in range(100)]
        hot = [f"hot:{i}" for i in range(100)]
        table.mset({key: VALUE for key in old})
        table.mset({key: VALUE for key in hot})
        batch = 0
        while table.stats()["memory"]["evicted_keys"] < 1000:
            table.mset({f"fill:{batch}:{i}": VALUE for i in range(50)})
            assert None not in table.mget(hot[:50])  # reading them keeps them recent,
            assert all(table.get(key) is not None for key in hot[50:])  # whichever way they are read
            batch += 1
            assert batch < 2000, "nothing was ever evicted"
        assert table.mget(old) == [None] * len(old)
        assert table.mget(hot) == [VALUE] * len(hot)
        assert table.get("fill:0:0") is None  # older than the hot keys' last read
        assert table.get(f"fill:{batch - 1}:0") == VALUE  # the newest write survives
        memory = table.stats()["memory"]
        assert memory["used_bytes"] <= memory["max_memory_bytes"]


def test_volatile_ttl_evicts_the_nearest_deadline_first_and_never_a_key_without_ttl(start_server):
    server = start_server("--max-memory", "40mb", "--eviction", "volatile-ttl")
    with Client(server.node, timeout_s=5) as table:
        forever = {f"forever:{i}": VALUE for i in range(100)}
        table.mset(forever)
        table.mset({f"soon:{i}": VALUE for i in range(100)}, ttl_s=1000)
        table.mset({f"later:{i}": VALUE for i in range(100)}, ttl_s=100_000)
        batch = 0
        while table.get("soon:99") is not None:
            table.mset({f"fill:{batch}:{i}": VALUE for i in range(50)}, ttl_s=10_000)
            batch += 1
            assert batch < 2000, "nothing was ever evicted"
        # Every "soon" key is gone; the next batch's room comes from the first
        # fillers (the nearest deadline now), never from "later".
        table.mset({f"fill:{batch}:{i}": VALUE for i in range(50)}, ttl_s=10_000)
        assert table.mget(list(forever)) == list(forever.values())
        assert table.mget([f"later:{i}" for i in range(100)]) == [VALUE] * 100
        assert table.get("fill:0:0") is None
        with pytest.raises(OutOfMemoryError):  # keys without TTL are never evicted
            _fill(table, "permanent", 10_000)
        assert table.mget(list(forever)) == list(forever.values())


@pytest.mark.slow
@pytest.mark.parametrize("policy, sizes", [
    ("allkeys-lru", (1000,)),
    ("volatile-ttl", (10, 50, 200, 1000, 5000, 20_000)),  # mixed sizes fragment the heap most
])
def test_rss_stays_within_the_limit_plus_ten_percent_under_churn(start_server, policy, sizes):
    limit = parse_bytes("64mb")
    server = start_server("--max-memory", "64mb", "--eviction", policy)
    rng = random.Random(7)
    written = 0
    with Client(server.node, timeout_s=10) as table:
        while written < 150 * 1000 * 1000:  # 150 MB of values through a 64 MiB server
            pairs = {f"key:{rng.randrange(10**6)}": "x" * rng.choice(sizes) for _ in range(100)}
            table.mset(pairs, ttl_s=1000 + rng.random() * 1000 if policy == "volatile-ttl" else None)
            written += sum(map(len, pairs.values()))
        stats = table.stats()
    peak_bytes = read_status_kib(server.proc.pid, "VmHWM") * 1024
    print(f"{policy}: rss {stats['rss_bytes']} peak {peak_bytes} used {stats['memory']['used_bytes']} limit {limit}")
    assert stats["memory"]["evicted_keys"] > 0
    assert stats["memory"]["used_bytes"] <= limit
    assert stats["rss_bytes"] <= limit * 1.10, f"RSS {stats['rss_bytes']} over {limit} + 10%"
    assert peak_bytes <= limit * 1.10, f"peak RSS {peak_bytes} over {limit} + 10%"


def test_a_limit_below_the_empty_footprint_stops_the_server():
    result = subprocess.run([sys.executable, "-m", "server", "--port", "0", "--max-memory", "1mb"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "is below what the server needs empty" in result.stderr


def test_a_bad_size_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "server", "--port", "0", "--max-memory", "lots"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "is not a size" in result.stderr


def _handler_with_guard(policy: str, keys_that_fit: int, store=None, table=None):
    from common.protocol import encode_request
    from server.eviction import EVICTION_POLICIES
    from server.handler import Handler
    from server.memory import MemoryGuard
    from server.store import Store

    table = table or Store
    store = store if store is not None else table()
    probe = MemoryGuard(table(), 1 << 40, EVICTION_POLICIES[policy], baseline_bytes=0)
    Handler(probe.store, memory=probe).handle(encode_request("set", "k00", "x" * 100))
    # The room a write asks for is an upper bound of what it costs: the compact table's is above the real cost.
    asked = (probe.store.new_key_bytes("k00") + probe.store.value_bytes("x" * 100) + probe.store.key_slack_bytes
             + probe.policy.entry_bytes)
    limit = probe.used_bytes * (keys_that_fit - 1) + max(asked, probe.used_bytes) + 50
    guard = MemoryGuard(store, limit, EVICTION_POLICIES[policy], baseline_bytes=0)
    handler = Handler(store, memory=guard)

    def call(op, *args, **options):
        return msgpack.unpackb(handler.handle(encode_request(op, *args, options=options or None)))

    return store, guard, call


@TABLES
def test_lru_evicts_in_exact_recency_order_without_a_socket(table):
    store, guard, call = _handler_with_guard("allkeys-lru", keys_that_fit=5, table=table)
    for name in "abcde":
        assert call("set", f"k{name}0", "x" * 100) == [0, True]
    assert call("get", "ka0") == [0, "x" * 100]  # a is now the most recent
    assert call("exists", "kb0") == [0, True]  # and then b
    assert call("set", "kf0", "x" * 100) == [0, True]
    assert sorted(store.scan(0, "*", 100)[1]) == ["ka0", "kb0", "kd0", "ke0", "kf0"]  # c went first
    assert call("set", "kg0", "x" * 100) == [0, True]
    assert call("mget", ["kd0"]) == [0, [None]]  # then d
    assert guard.evicted_keys == 2 and guard.used_bytes <= guard.max_memory_bytes


def test_noeviction_refuses_without_a_socket_and_delete_makes_room():
    # A delete frees the value at once; its tombstone (key and version) once the grace period is over.
    from server.store import Store

    now = [1_000_000.0]
    store, guard, call = _handler_with_guard("noeviction", keys_that_fit=3,
                                             store=Store(clock=lambda: now[0], tombstone_grace_s=60))
    for name in "abc":
        assert call("set", f"k{name}0", "x" * 100)[0] == 0
    status, message = call("set", "kd0", "x" * 100)
    assert status == 6 and message.startswith("out of memory")
    assert call("incr", "counter", 1)[0] == 6
    assert call("get", "ka0") == [0, "x" * 100]
    used = guard.used_bytes
    assert call("del", "ka0") == [0, True]
    assert used - guard.used_bytes >= 100
    now[0] += 61
    store.sweep()
    assert call("set", "kd0", "x" * 100) == [0, True]
    assert len(store) == 3 and guard.refused_writes == 2


@TABLES
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_eviction_leaves_no_tombstone_and_never_evicts_one(policy, table):
    # An evicted key is not deleted: a replica's copy of it is not outdated, so nothing must outlive it.
    store, guard, call = _handler_with_guard(policy, keys_that_fit=4, table=table)
    assert call("set", "deleted", "x" * 100) == [0, True]
    assert call("del", "deleted") == [0, True]
    for i in range(8):
        assert call("set", f"k{i}0", "x" * 100, ttl_s=600) == [0, True]
    assert guard.evicted_keys >= 4
    assert call("get", "k00") == [0, None] and store.record("k00") is None
    assert store.tombstones == 1 and store.tombstone("deleted") is not None


def test_a_write_bigger_than_the_whole_limit_is_refused_without_evicting_anything():
    store, guard, call = _handler_with_guard("allkeys-lru", keys_that_fit=5)
    for name in "abcde":
        call("set", f"k{name}0", "x" * 100)
    status, message = call("set", "huge", "x" * guard.max_memory_bytes)
    assert status == 6 and message.startswith("out of memory")
    assert len(store) == 5 and guard.evicted_keys == 0


@pytest.mark.parametrize("policy", ["allkeys-lru", "noeviction"])
def test_at_the_limit_a_bad_write_gets_its_own_error_and_evicts_nothing(policy):
    # The memory check comes after every argument and option check (docs/PROTOCOL.md 4.4).
    store, guard, call = _handler_with_guard(policy, keys_that_fit=5)
    for name in "abcde":
        call("set", f"k{name}0", "x" * 100)
    assert call("set", "kf0", "x" * 100)[0] == (0 if policy == "allkeys-lru" else 6)  # full: room is made or not
    keys, evicted = sorted(store.scan(0, "*", 100)[1]), guard.evicted_keys
    for request, status in [(("set", "new", "x" * 100, {"ttl_s": -1}), 1), (("set", 5, "x" * 100), 1),
                            (("set", "new", "x" * 100, {"nx": True, "xx": True}), 1), (("incr", "new", 1.5), 1),
                            (("mset", {"a": "x" * 100, "b": 7}), 1), (("cas", "new", 5, "x"), 1)]:
        reply = call(*request[:-1], **request[-1]) if isinstance(request[-1], dict) else call(*request)
        assert reply[0] == status, (request, reply)
    assert sorted(store.scan(0, "*", 100)[1]) == keys and guard.evicted_keys == evicted


def test_evictions_are_made_durable_with_a_data_dir(start_server, tmp_path):
    args = ("--max-memory", "40mb", "--eviction", "allkeys-lru", "--data-dir", str(tmp_path), "--fsync", "always")
    server = start_server(*args)
    with Client(server.node, timeout_s=10) as table:
        batch = 0
        while table.stats()["memory"]["evicted_keys"] == 0:
            _fill(table, f"b{batch}", 1)
            batch += 1
            assert batch < 2000, "nothing was ever evicted"
        _fill(table, "last", 5)
        before = sorted(table.keys())
    assert server.stop() == 0
    restarted = start_server(*args)
    with Client(restarted.node, timeout_s=10) as table:
        assert sorted(table.keys()) == before  # evicted keys do not come back on restart
        assert table.get("b0:0:0") is None
