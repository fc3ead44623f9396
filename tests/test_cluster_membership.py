"""Cluster clients of nodes that keep their membership: keys placed by node names, changes followed.

The servers are real processes started with --join (tests/kept_cluster.py);
each test runs with ClusterClient and with AsyncClusterClient.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from client import Client
from common.membership import Rings, parse_entries
from tests.awaited import client_factory
from tests.kept_cluster import Start, announce, entry, eventually, members, node, now_ms, states
from tests.servers import ServerProcess, free_port


@pytest.fixture
def three(start_server: Start) -> list[ServerProcess]:
    first = node(start_server, "n1", f"127.0.0.1:{free_port()}")
    second = node(start_server, "n2", first)
    third = node(start_server, "n3", first)
    eventually(lambda: all(states(server) == {"n1": "ready", "n2": "ready", "n3": "ready"}
                           for server in (first, second, third)))
    return [first, second, third]


@pytest.fixture(params=["ClusterClient", "AsyncClusterClient"])
def make(request: pytest.FixtureRequest, runner: asyncio.Runner) -> Any:
    return client_factory(request.param, runner)


@pytest.fixture
def table(make: Any, three: list[ServerProcess]) -> Iterator[Any]:
    # Given one node only: the others come from its membership.
    with make(three[1].node, replicas=1, timeout_s=0.5, retries=0) as cluster:
        yield cluster


def held(servers: dict[str, ServerProcess], key: str) -> dict[str, str | None]:
    """What each node holds under ``key``, by node name."""
    found = {}
    for name, server in servers.items():
        with Client(server.node, timeout_s=2.0) as direct:
            found[name] = direct.get(key)
    return found


def test_keys_are_placed_by_node_names_over_every_member(three: list[ServerProcess], table: Any) -> None:
    table.set("norway", "oslo")
    assert table.nodes == ["n1", "n2", "n3"]
    assert table.replicas == 2  # the cluster's, not the one the client was given
    rings = Rings(parse_entries(members(three[0])["members"], now_ms()), 2)
    servers = dict(zip(("n1", "n2", "n3"), three, strict=True))
    for index in range(30):
        key = f"key{index}"
        table.set(key, str(index))
        holders = {name for name, value in held(servers, key).items() if value is not None}
        assert holders == set(rings.owners(key)), key
        assert table.get(key) == str(index)


def test_the_client_follows_a_node_that_joins(start_server: Start, three: list[ServerProcess], table: Any) -> None:
    table.set("before", "1")
    fourth = node(start_server, "n4", three[0])
    eventually(lambda: table.get("before") == "1" and "n4" in table.nodes)
    # New writes now reach the new node for the keys it owns.
    owned = [key for key in (f"k{i}" for i in range(200)) if "n4" in table.owners(key)]
    assert owned
    for key in owned[:10]:
        table.set(key, "v")
        with Client(fourth.node, timeout_s=2.0) as direct:
            assert direct.get(key) == "v"


def test_a_member_whose_address_does_not_resolve_counts_as_down(three: list[ServerProcess], table: Any) -> None:
    announce(three[0], {"gone": entry("gone.invalid:7400", "ready", now_ms(), "gone")})
    eventually(lambda: table.get("x") is None and "gone" in table.nodes)
    for index in range(30):  # some of these keys have "gone" as an owner: the other owner takes them
        table.set(f"key{index}", str(index))
    assert table.mget([f"key{index}" for index in range(30)]) == [str(index) for index in range(30)]
    assert table.health()["gone"] is False


def test_a_static_cluster_is_placed_by_the_addresses_given(start_server: Start, make: Any) -> None:
    servers = [start_server() for _ in range(2)]
    with make([server.node for server in servers], replicas=2, timeout_s=0.5, retries=0) as cluster:
        cluster.set("a", "1")
        assert cluster.nodes == sorted(server.node for server in servers)
        assert cluster.get("a") == "1"
