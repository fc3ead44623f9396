"""Nodes started with --join keep the cluster's membership: members, announce, gossip, the data dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import Client, ClusterClient, InvalidRequestError
from client.membership import NODE, leave
from tests.kept_cluster import Start, announce, entry, eventually, members, node, now_ms, states
from tests.servers import ServerProcess, free_port, run_server


def start_three(start_server: Start) -> list[ServerProcess]:
    first = node(start_server, "n1", f"127.0.0.1:{free_port()}")  # its seed is down: it starts a cluster
    second = node(start_server, "n2", first)
    third = node(start_server, "n3", second)
    everyone = {"n1": "ready", "n2": "ready", "n3": "ready"}
    eventually(lambda: all(states(server) == everyone for server in (first, second, third)))
    return [first, second, third]


@pytest.fixture
def three(start_server: Start) -> list[ServerProcess]:
    return start_three(start_server)


@pytest.fixture(scope="module")
def unchanged_three() -> Iterator[list[ServerProcess]]:
    """Three nodes shared by the tests that must leave them as they found them (each checks it)."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        started.append(ServerProcess(args))
        return started[-1]

    try:
        yield start_three(start)
    finally:
        for server in started:
            server.kill()


def test_nodes_that_join_share_one_view_with_one_epoch(three: list[ServerProcess]) -> None:
    views = [members(server) for server in three]
    assert len({view["epoch"] for view in views}) == 1
    for view in views:
        assert view["dynamic"] is True
        assert view["replicas"] == 2
        assert {name: entry["address"] for name, entry in view["members"].items()} == {
            name: server.node for name, server in zip(("n1", "n2", "n3"), three, strict=True)}


def test_a_server_without_join_is_a_cluster_of_one(start_server: Start) -> None:
    server = start_server("--node-name", "solo")
    view = members(server)
    assert view["dynamic"] is False
    assert {name: entry["state"] for name, entry in view["members"].items()} == {"solo": "ready"}
    assert view["members"]["solo"]["address"] == f"solo:{server.port}"  # NODE_NAME and the bound port


def test_an_announced_entry_spreads_to_every_node_by_gossip(three: list[ServerProcess]) -> None:
    first, second, third = three
    before = members(second)["epoch"]
    stamp = now_ms()
    assert announce(first, {"n9": entry("127.0.0.1:9", "leaving", stamp, "n9")}) == {"n9": True}
    eventually(lambda: all(states(server).get("n9") == "leaving" for server in (second, third)))
    assert members(second)["epoch"] != before
    assert len({members(server)["epoch"] for server in three}) == 1


def test_the_newer_entry_wins_and_an_older_one_changes_nothing(three: list[ServerProcess]) -> None:
    first = three[0]
    stamp = now_ms()
    assert announce(first, {"n9": entry("127.0.0.1:9", "joining", stamp, "n9", counter=1)}) == {"n9": True}
    epoch = members(first)["epoch"]
    assert announce(first, {"n9": entry("127.0.0.1:9", "left", stamp, "n9")}) == {"n9": False}
    assert states(first)["n9"] == "joining"
    assert members(first)["epoch"] == epoch
    assert announce(first, {"n9": entry("127.0.0.1:9", "ready", stamp + 1, "n9")}) == {"n9": True}
    assert states(first)["n9"] == "ready"


def test_no_one_else_changes_a_nodes_own_entry(three: list[ServerProcess]) -> None:
    first = three[0]
    mine = members(first)["members"]["n1"]
    newer = mine["version"][0] + 1000
    assert announce(first, {"n1": entry("127.0.0.1:9", "left", newer, "n1")}) == {"n1": False}
    now = members(first)["members"]["n1"]
    assert (now["state"], now["address"]) == ("ready", first.node)
    assert now["version"] > [newer, 0, "n1"]  # re-issued past it, so its own entry wins everywhere


@pytest.mark.parametrize("entries, message", [
    ([1, 2], "map of name -> entry"),
    ({"n9": "ready"}, "an entry must be a map"),
    ({"n9": {"address": "127.0.0.1:9", "state": "asleep", "version": [1, 0, "n9"]}}, "state must be one of"),
    ({"n9": {"address": "127.0.0.1:99999", "state": "ready", "version": [1, 0, "n9"]}}, "port"),
    ({"n9": {"address": "127.0.0.1:9", "state": "ready", "version": [1, 0, "n1"]}}, "written only by the member"),
    ({"n9": {"address": "127.0.0.1:9", "state": "ready", "version": [1, 70000, "n9"]}},
     "counter must be an integer from 0 to 65535"),
    ({"n9": {"address": "127.0.0.1:9", "state": "ready", "version": [1.5, 0, "n9"]}}, "ms must be an integer"),
    ({"n9": {"address": "127.0.0.1:9", "state": "ready", "version": [2**62, 0, "n9"]}}, "ahead of this clock"),
    ({"x" * 300: {"address": "127.0.0.1:9", "state": "ready", "version": [1, 0, "x" * 300]}},
     "member name must be a string of 1 to 255 bytes"),
])
def test_a_malformed_announcement_is_refused_and_changes_nothing(unchanged_three: list[ServerProcess], entries: Any,
                                                                 message: str) -> None:
    first = unchanged_three[0]
    before = members(first)
    with pytest.raises(InvalidRequestError, match=message):
        announce(first, entries)
    assert members(first) == before
    assert first.proc.poll() is None


def test_a_restarted_node_knows_the_members_from_its_data_dir(start_server: Start, tmp_path: Path) -> None:
    first = node(start_server, "n1", f"127.0.0.1:{free_port()}")
    second = node(start_server, "n2", first, args=("--data-dir", str(tmp_path)))
    eventually(lambda: states(second) == {"n1": "ready", "n2": "ready"})
    assert second.stop() == 0
    # Its only seed is down now: what it knows of the cluster comes from its data dir.
    again = node(start_server, "n2", f"127.0.0.1:{free_port()}", args=("--data-dir", str(tmp_path)))
    eventually(lambda: states(again) == {"n1": "ready", "n2": "ready"})
    # And it has told the cluster where it is now.
    eventually(lambda: members(first)["members"]["n2"]["address"] == again.node)


@pytest.mark.parametrize("args, message", [
    (("--replicas", "0"), "replicas must be at least 1"),
    (("--join", "127.0.0.1:99999"), "port"),
    (("--advertise", "[::1"), "unclosed"),
    (("--node-name", "x" * 300), "node name must be 1 to 255 bytes"),
])
def test_bad_membership_settings_are_refused(args: tuple[str, ...], message: str) -> None:
    result = run_server(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_node_says_who_it_is_with_its_state_and_the_epoch(three: list[ServerProcess]) -> None:
    first = three[0]
    with Client(first.node, timeout_s=2.0) as client:
        answer = client._execute(NODE)
    assert answer == {"name": "n1", "address": first.node, "state": "ready", "epoch": members(first)["epoch"],
                      "up_since_ms": answer["up_since_ms"], "loaded_until_ms": 0}  # nothing loaded: no data dir
    assert now_ms() - 60_000 < answer["up_since_ms"] < now_ms()


def test_a_cluster_of_one_refuses_to_leave(start_server: Start) -> None:
    server = start_server("--node-name", "solo")
    with pytest.raises(InvalidRequestError, match="keeps no membership"):
        leave(server.node, timeout_s=5)


def test_a_left_entry_is_forgotten_after_the_grace_and_its_name_joins_again_as_a_new_node(
        start_server: Start) -> None:
    grace = ("--tombstone-grace-s", "2")
    first = node(start_server, "n1", f"127.0.0.1:{free_port()}", args=grace)
    second = node(start_server, "n2", first, args=grace)
    eventually(lambda: all(states(server) == {"n1": "ready", "n2": "ready"} for server in (first, second)))
    written = {f"key{index}": str(index) for index in range(50)}
    with ClusterClient(first.node, timeout_s=2.0) as table:
        table.mset(written)
    assert leave(second.node, timeout_s=30)["state"] == "left"
    eventually(lambda: states(first)["n2"] == "left")
    left_entry = members(first)["members"]["n2"]
    assert second.stop() == 0

    eventually(lambda: states(first) == {"n1": "ready"})
    assert announce(first, {"n2": left_entry}) == {"n2": False}  # gossip offering it again changes nothing
    assert states(first) == {"n1": "ready"}

    again = node(start_server, "n2", first, args=grace)  # the same name, a new node
    eventually(lambda: all(states(server) == {"n1": "ready", "n2": "ready"} for server in (first, again)))
    with Client(again.node, timeout_s=2.0) as direct:  # with R=2 it owns every key: it pulled them all
        assert direct.mget(list(written)) == list(written.values())
