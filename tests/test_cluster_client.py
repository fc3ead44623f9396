"""ClusterClient, AsyncClusterClient and the CLI's multi-node mode against real servers on loopback.

The ``table`` fixture runs each test with a ``ClusterClient`` and with an
``AsyncClusterClient`` whose calls are awaited (tests/awaited.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client import Client, ClusterClient, NodeUnavailableError, NotAnIntegerError
from common.address import expand_nodes
from common.placement import Placement
from tests.awaited import client_factory
from tests.servers import ServerProcess, run_cli


@pytest.fixture
def three(start_server: Callable[..., ServerProcess]) -> list[ServerProcess]:
    return [start_server() for _ in range(3)]


@pytest.fixture(params=["ClusterClient", "AsyncClusterClient"])
def table(request: pytest.FixtureRequest, three: list[ServerProcess], runner: asyncio.Runner) -> Iterator[Any]:
    make = client_factory(request.param, runner)
    with make([s.node for s in three], replicas=2, timeout_s=0.3, retries=0) as cluster:
        yield cluster


def holders(three: list[ServerProcess], key: str) -> dict[str, str | None]:
    found = {}
    for server in three:
        with Client(server.node, timeout_s=2.0) as direct:
            found[server.node] = direct.get(key)
    return found


def test_every_key_is_on_exactly_its_two_owners(three: list[ServerProcess], table: Any) -> None:
    table.mset({f"k{i}": str(i) for i in range(300)})
    table.set("single", "x")
    for key, value in [("k7", "7"), ("k123", "123"), ("single", "x")]:
        held = holders(three, key)
        assert {node for node, v in held.items() if v == value} == set(table.owners(key))
        assert sum(v is not None for v in held.values()) == 2


def test_reads_and_batches_keep_order_and_missing_keys(table: Any) -> None:
    table.mset({"a": "1", "b": "2", "c": "3"})
    assert table.mget(["c", "nope", "a", "a", "b"]) == ["3", None, "1", "1", "2"]
    assert table.get("nope") is None and table.exists("a") and not table.exists("nope")
    assert table.ttl("a") == -1 and table.ttl("nope") == -2
    assert sorted(table.keys()) == ["a", "b", "c"]  # each key once, though stored twice


def test_mapping_sugar(three: list[ServerProcess]) -> None:
    with ClusterClient([s.node for s in three], replicas=2, timeout_s=0.3, retries=0) as table:
        table["d"] = "4"
        assert table["d"] == "4" and "d" in table and "e" not in table
        del table["d"]
        with pytest.raises(KeyError):
            table["d"]


def test_conditional_writes_are_decided_once_and_copied(three: list[ServerProcess], table: Any) -> None:
    assert table.set("n", "first", nx=True) is True
    assert table.set("n", "second", nx=True) is False
    assert set(holders(three, "n").values()) - {None} == {"first"}
    assert table.incr("counter", 5) == 5 and table.incr("counter", 2) == 7
    assert set(holders(three, "counter").values()) - {None} == {"7"}
    assert table.cas("n", "first", "third") is True and table.cas("n", "first", "x") is False
    assert set(holders(three, "n").values()) - {None} == {"third"}
    with pytest.raises(NotAnIntegerError):
        table.incr("n")


def test_incr_copies_the_remaining_ttl(three: list[ServerProcess], table: Any) -> None:
    table.set("limited", "1", ttl_s=100)
    table.incr("limited")
    for node in table.owners("limited"):
        with Client(node, timeout_s=2.0) as direct:
            assert direct.get("limited") == "2" and 90 < direct.ttl("limited") <= 100


def test_a_dead_node_is_skipped_and_no_owner_answering_is_an_error(three: list[ServerProcess], table: Any) -> None:
    table.mset({f"k{i}": str(i) for i in range(100)})
    three[0].kill()
    assert table.mget([f"k{i}" for i in range(100)]) == [str(i) for i in range(100)]
    assert table.is_dead(three[0].node)
    table.set("after", "yes")
    assert table.get("after") == "yes"
    assert table.health() == {three[0].node: False, three[1].node: True, three[2].node: True}
    with pytest.raises(NodeUnavailableError, match=three[0].node):
        table.ping()
    three[1].kill()
    lost = next(f"k{i}" for i in range(100) if set(table.owners(f"k{i}")) == {three[0].node, three[1].node})
    with pytest.raises(NodeUnavailableError, match="no owner of key"):
        table.get(lost)


def test_scan_pages_through_every_member_and_keys_returns_each_key_once(three: list[ServerProcess], table: Any) -> None:
    stored = sorted(f"k{i}" for i in range(60))
    table.mset(dict.fromkeys(stored, "v"))
    found, cursor, pages = [], 0, 0
    while True:
        cursor, page = table.scan(cursor, "k*", 10)
        found += page
        pages += 1
        if cursor == 0:
            break
    assert sorted(found) == sorted(stored * 2)  # every copy, on its two owners
    assert pages >= 3  # at least a page of each member
    assert sorted(table.keys("k*", count=7)) == stored  # each key once
    three[0].kill()
    assert sorted(table.keys("k*")) == stored  # a member down: its keys have copies on the others


def test_stats_has_each_node_and_the_total(three: list[ServerProcess], table: Any) -> None:
    table.mset({f"k{i}": "v" for i in range(50)})
    stats = table.stats()
    assert sorted(stats["nodes"]) == sorted(s.node for s in three)
    assert stats["total"]["keys"] == 100 == sum(n["keys"] for n in stats["nodes"].values())
    assert stats["total"]["nodes_up"] == 3 and stats["replicas"] == 2


def test_membership_is_parsed_deduplicated_and_checked() -> None:
    assert expand_nodes(" 127.0.0.1:1, 127.0.0.1:1,,[::1]:2") == ["127.0.0.1:1", "[::1]:2"]
    with pytest.raises(ValueError):
        expand_nodes(",")
    with pytest.raises(ValueError):
        ClusterClient("127.0.0.1:1,127.0.0.1:2", replicas=0)
    assert Placement(["a:1"], 3).owners("k") == ["a:1"]
    # The same members in another order place keys alike.
    one, two = Placement(["a:1", "b:1", "c:1"], 2), Placement(["c:1", "a:1", "b:1"], 2)
    assert all(one.owners(f"k{i}") == two.owners(f"k{i}") for i in range(1000))


def test_cli_with_several_nodes(three: list[ServerProcess]) -> None:
    nodes = ",".join(s.node for s in three)
    assert run_cli(nodes, "set", "norway", "oslo").returncode == 0
    stats = run_cli("--json", nodes, "stats")
    assert json.loads(stats.stdout)["total"]["keys"] == 2
    text = run_cli(nodes, "stats").stdout
    assert "total.keys: 2\n" in text and f"nodes.{three[0].node}.keys:" in text
    assert run_cli(nodes, "ping").stdout == "PONG\n"
    rebalance = run_cli("--json", "--replicas", "3", nodes, "rebalance")
    assert json.loads(rebalance.stdout)["copied"] == 1  # the third copy
    got = run_cli("--replicas", "3", nodes, "get", "norway")
    assert (got.returncode, got.stdout) == (0, "oslo\n")
    single = run_cli(three[0].node, "rebalance")
    assert single.returncode == 2 and "rebalance needs" in single.stderr
    bad = run_cli(f"{nodes},host:http", "get", "k")
    assert bad.returncode == 2 and "'http' in 'host:http'" in bad.stderr


def test_rebalance_from_leaving_nodes_drains_them(three: list[ServerProcess]) -> None:
    nodes = [s.node for s in three]
    with ClusterClient(nodes, replicas=1) as everything:
        everything.mset({f"k{i}": str(i) for i in range(500)})
    # Remove two of three nodes at once, with one copy of each key: drain them.
    drained = run_cli("--json", "--replicas", "1", nodes[0], "rebalance", "--from", ",".join(nodes[1:]))
    assert drained.returncode == 0, drained.stderr
    report = json.loads(drained.stdout)
    assert report["copied"] == report["removed"] > 0
    with Client(nodes[0], timeout_s=2.0) as remaining:
        assert remaining.mget([f"k{i}" for i in range(500)]) == [str(i) for i in range(500)]
    for leaving in nodes[1:]:
        with Client(leaving, timeout_s=2.0) as direct:
            assert list(direct.keys()) == []


@settings(max_examples=100, deadline=None)
@given(
    members=st.lists(st.integers(1, 60), min_size=1, max_size=8, unique=True),
    replicas=st.integers(1, 4),
    key=st.text(min_size=0, max_size=40),
)
def test_placement_gives_distinct_owners_and_a_new_node_only_takes_over(
        members: list[int], replicas: int, key: str,
) -> None:
    names = [f"10.0.0.{m}:7400" for m in members]
    owners = Placement(names, replicas).owners(key)
    assert len(owners) == len(set(owners)) == min(replicas, len(names))
    assert set(owners) <= set(names)
    # Adding a node never reshuffles the others: the key either keeps its
    # owners, or the new node replaces exactly one of them.
    grown = Placement([*names, "10.0.1.1:7400"], replicas).owners(key)
    if "10.0.1.1:7400" not in grown:
        assert grown == owners
    elif len(names) >= replicas:
        assert len(set(owners) - set(grown)) == 1


def test_rebalance_shows_a_progress_bar_on_a_terminal(three: list[ServerProcess]) -> None:
    import fcntl
    import os
    import pty
    import struct
    import sys
    import termios

    from tests.servers import ROOT

    nodes = [s.node for s in three]
    with ClusterClient(nodes[:2], replicas=2) as table:
        table.mset({f"k{i}": "v" for i in range(300)})
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on a terminal 100 columns wide
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
            os.chdir(ROOT)
            os.execv(sys.executable, [sys.executable, "-m", "client", ",".join(nodes), "rebalance"])
        finally:
            os._exit(127)  # never return into the test runner
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "rebalance: 100%" in text and "examined" in text
