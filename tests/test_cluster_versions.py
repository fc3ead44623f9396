"""A cluster client keeps the newest version of every key: reads, read-repair, deletes, rebalance.

Real servers on free ports; each test that reads through the cluster runs
with a ``ClusterClient`` and with an ``AsyncClusterClient`` (tests/awaited.py).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client import Client, ClusterClient, InvalidRequestError
from client.rebalance import rebalance
from tests.awaited import client_factory
from tests.servers import ROOT, ServerProcess

KEYS = [f"k{i}" for i in range(200)]


@pytest.fixture(params=["ClusterClient", "AsyncClusterClient"])
def make_cluster(request: pytest.FixtureRequest, runner: asyncio.Runner) -> Callable[..., Any]:
    return client_factory(request.param, runner)


def direct_mget(node: str, keys: list[str]) -> list[str | None]:
    """What one node holds, asked directly (no cluster rules)."""
    with Client(node, timeout_s=2.0) as direct:
        return direct.mget(keys)


def test_a_node_back_with_its_old_data_shows_no_older_value_and_no_deleted_key(
        start_server: Callable[..., ServerProcess], tmp_path: Path, make_cluster: Callable[..., Any]) -> None:
    data_dirs = [str(tmp_path / f"data{i}") for i in range(3)]
    servers = [start_server("--data-dir", data_dir, "--fsync", "always") for data_dir in data_dirs]
    nodes = [server.node for server in servers]
    with make_cluster(nodes, replicas=2, timeout_s=0.3, retries=0) as table:
        table.mset(dict.fromkeys(KEYS, "old"))
        away = servers[0]
        theirs = [key for key in KEYS if away.node in table.owners(key)]
        overwritten, deleted = theirs[::2], theirs[1::2]
        away.stop()
        # While it is away: overwrites (mset, set) and deletes of keys it holds.
        table.mset(dict.fromkeys(overwritten[:20], "new"))
        for key in overwritten[20:]:
            table.set(key, "new")
        for key in deleted:
            assert table.delete(key) is True
    start_server("--data-dir", data_dirs[0], "--port", str(away.port))
    assert set(direct_mget(away.node, theirs)) == {"old"}  # it is back with what it had

    expected = {key: "new" for key in overwritten} | dict.fromkeys(deleted)
    with make_cluster(nodes, replicas=2, timeout_s=0.3, retries=0) as table:
        # Read one at a time (get, exists, ttl) for some keys, in a batch (mget) for the others.
        singles, batch = theirs[: len(theirs) // 2], theirs[len(theirs) // 2:]
        for key in singles:
            assert table.get(key) == expected[key], key
            assert table.exists(key) is (expected[key] is not None)
            assert table.ttl(key) == (-1 if expected[key] is not None else -2)
        assert table.mget(batch) == [expected[key] for key in batch]
        # Reading repaired the node that was away: it holds the newest of each key (a delete too).
        assert direct_mget(away.node, theirs) == [expected[key] for key in theirs]
        # Writes made after it came back win over what it had, conditional ones decided on the newest.
        key = overwritten[0]
        assert table.cas(key, "old", "x") is False and table.cas(key, "new", "newer") is True
        assert table.set(deleted[0], "again", nx=True) is True
        assert table.get(key) == "newer" and table.get(deleted[0]) == "again"


def test_a_delete_answers_for_the_cluster_not_for_an_owner_back_with_old_data(
        start_server: Callable[..., ServerProcess], tmp_path: Path, make_cluster: Callable[..., Any]) -> None:
    # Two nodes, R=2: each is the first owner of about half of the keys.
    data_dirs = [str(tmp_path / f"data{i}") for i in range(2)]
    servers = [start_server("--data-dir", data_dir, "--fsync", "always") for data_dir in data_dirs]
    nodes = [server.node for server in servers]
    away = servers[1]
    with make_cluster(nodes, replicas=2, timeout_s=0.3, retries=0) as table:
        table.mset(dict.fromkeys(KEYS, "old"))
        firsts = {table.owners(key)[0] for key in KEYS}
        assert firsts == set(nodes)  # both cases: the node back with old data is first owner, and second
        away.stop()
        for key in KEYS:
            assert table.delete(key) is True
    start_server("--data-dir", data_dirs[1], "--port", str(away.port))
    assert set(direct_mget(away.node, KEYS)) == {"old"}  # it is back with the values deleted meanwhile

    with make_cluster(nodes, replicas=2, timeout_s=0.3, retries=0) as table:
        # Deleted already: a second delete finds nothing, whichever owner applies it.
        assert [table.delete(key) for key in KEYS] == [False] * len(KEYS)
        assert table.mget(KEYS) == [None] * len(KEYS)
    assert direct_mget(away.node, KEYS) == [None] * len(KEYS)  # and the old values are gone from it


def test_read_repair_gives_an_owner_back_empty_the_newest_record(
        start_server: Callable[..., ServerProcess], make_cluster: Callable[..., Any]) -> None:
    servers = [start_server() for _ in range(3)]
    nodes = [server.node for server in servers]
    with make_cluster(nodes, replicas=2, timeout_s=1.0, retries=0) as table:
        table.mset(dict.fromkeys(KEYS, "v"))
        table.delete(KEYS[0])
        first = next(server for server in servers if server.node == table.owners(KEYS[1])[0])
    theirs = [key for key in KEYS if first.node in table.owners(key)]
    first.kill()
    start_server("--port", str(first.port))  # back, in memory: empty
    assert set(direct_mget(first.node, theirs)) == {None}
    with make_cluster(nodes, replicas=2, timeout_s=1.0, retries=0) as table:
        assert table.get(KEYS[1]) == "v"
        assert table.mget(theirs) == [None if key == KEYS[0] else "v" for key in theirs]
    assert direct_mget(first.node, theirs) == [None if key == KEYS[0] else "v" for key in theirs]


def test_a_delete_is_not_undone_by_a_copy_that_missed_it(
        start_server: Callable[..., ServerProcess], make_cluster: Callable[..., Any]) -> None:
    servers = [start_server() for _ in range(3)]
    nodes = [server.node for server in servers]
    with make_cluster(nodes, replicas=2, timeout_s=0.2, retries=0) as table:
        owners = table.owners("k")
    # The key was last written while a third node was an owner, which kept a copy.
    outsider = next(server for server in servers if server.node not in owners)
    with make_cluster([*owners, outsider.node], replicas=3, timeout_s=0.2, retries=0) as everyone:
        everyone.set("k", "v")
    with make_cluster(nodes, replicas=2, timeout_s=0.2, retries=0) as table:
        assert table.delete("k") is True
        assert table.get("k") is None
        assert direct_mget(outsider.node, ["k"]) == ["v"]  # a delete goes to the owners only
    with ClusterClient(nodes, replicas=2, timeout_s=1.0, retries=0) as table:
        report = rebalance(table)  # copies what the outsider holds to the owners: older than the delete
        assert report.complete and report.copied == 0
        assert table.get("k") is None and table.delete("k") is False
    time.sleep(0.05)  # the outsider's removed copy is an empty value that expires after 1 ms
    assert direct_mget(outsider.node, ["k"]) == [None]


def test_a_delete_reaches_the_newer_copy_when_the_first_owner_holds_an_older_delete(
        start_server: Callable[..., ServerProcess], tmp_path: Path, make_cluster: Callable[..., Any]) -> None:
    """The first owner was away when the key was set again: it holds the tombstone of an earlier delete.
    Found by tests/test_cluster_changes.py: the delete was acknowledged and reads went on returning the
    value (resurrected), since the old tombstone was all the first owner had to copy."""
    data_dirs = [str(tmp_path / f"data{i}") for i in range(2)]
    servers = [start_server("--data-dir", data_dir, "--fsync", "always") for data_dir in data_dirs]
    nodes = [server.node for server in servers]
    with make_cluster(nodes, replicas=2, timeout_s=0.3, retries=0) as table:
        table.set("k", "v1")
        assert table.delete("k") is True
        first = next(server for server in servers if server.node == table.owners("k")[0])
        first.stop()
        table.set("k", "v2")  # the second owner alone
    start_server("--data-dir", data_dirs[servers.index(first)], "--port", str(first.port))
    with make_cluster(nodes, replicas=2, timeout_s=0.3, retries=0) as table:
        assert table.delete("k") is True
        assert table.get("k") is None
    assert direct_mget(nodes[0], ["k"]) == direct_mget(nodes[1], ["k"]) == [None]


def test_rebalance_brings_a_returning_node_up_to_date_and_never_undoes_newer_data(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    data_dirs = [str(tmp_path / f"data{i}") for i in range(3)]
    servers = [start_server("--data-dir", data_dir, "--fsync", "always") for data_dir in data_dirs]
    nodes = [server.node for server in servers]
    with ClusterClient(nodes, replicas=2, timeout_s=0.3, retries=0) as table:
        table.mset(dict.fromkeys(KEYS, "old"))
        theirs = [key for key in KEYS if nodes[0] in table.owners(key)]
        overwritten, deleted = theirs[::2], theirs[1::2]
        servers[0].stop()
        table.mset(dict.fromkeys(overwritten, "new"))
        for key in deleted:
            table.delete(key)
    start_server("--data-dir", data_dirs[0], "--port", str(servers[0].port))
    expected = {key: "old" for key in KEYS} | dict.fromkeys(overwritten, "new") | dict.fromkeys(deleted)
    with ClusterClient(nodes, replicas=2, timeout_s=1.0, retries=0) as table:
        # Straight after the return, before any read could repair it: rebalance alone.
        report = rebalance(table)
        assert report.complete and report.copied == len(theirs)  # each newer record, once, to the returned node
        for name in nodes:
            mine = [key for key in KEYS if name in table.owners(key)]
            assert direct_mget(name, mine) == [expected[key] for key in mine], name
        assert table.mget(KEYS) == [expected[key] for key in KEYS]
        again = rebalance(table)
        assert (again.copied, again.removed) == (0, 0)


def test_rebalance_moves_keys_to_a_new_node_keeping_newer_writes(start_server: Callable[..., ServerProcess]) -> None:
    servers = [start_server() for _ in range(3)]
    nodes = [server.node for server in servers]
    with ClusterClient(nodes[:2], replicas=2, timeout_s=1.0, retries=0) as two:
        two.mset(dict.fromkeys(KEYS, "old"))
    with ClusterClient(nodes, replicas=2, timeout_s=1.0, retries=0) as three:
        moved = [key for key in KEYS if nodes[2] in three.owners(key)]
        # Written through the new membership before the rebalance: newer than the copies it moves.
        three.mset(dict.fromkeys(moved[:10], "new"))
        for key in moved[10:20]:
            three.delete(key)
        report = rebalance(three)
        # Copied to the new node: each old value not written since, and the tombstones it lacks (a
        # delete whose first owner held nothing is applied by the other owner alone).
        assert report.complete and report.copied >= len(moved) - 20
        assert report.removed == len(moved)  # from the node that is no longer an owner
        expected = {key: "old" for key in KEYS} | dict.fromkeys(moved[:10], "new") | dict.fromkeys(moved[10:20])
        time.sleep(0.05)  # removed copies are empty values that expire after 1 ms
        for name in nodes:
            mine = [key for key in KEYS if name in three.owners(key)]
            others = [key for key in KEYS if name not in three.owners(key)]
            assert direct_mget(name, mine) == [expected[key] for key in mine], name
            assert set(direct_mget(name, others)) <= {None}, name
        assert three.mget(KEYS) == [expected[key] for key in KEYS]


#: The last commit of main before servers had versions (a server of an earlier release).
BEFORE_VERSIONS = "0c28689"


def test_a_server_without_versions_is_refused_clearly(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE_VERSIONS], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    program = [sys.executable, "-c", "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
               "runpy.run_module('server', run_name='__main__')", str(tmp_path)]
    old = start_server(program=program)
    nodes = [start_server().node, old.node]
    with ClusterClient(nodes, replicas=2, timeout_s=2.0, retries=0) as table:
        with pytest.raises(InvalidRequestError, match="getv"):
            table.get("k")
        key = next(f"k{i}" for i in range(100) if table.owners(f"k{i}")[0] == old.node)
        with pytest.raises(InvalidRequestError, match="rec"):
            table.set(key, "v")
