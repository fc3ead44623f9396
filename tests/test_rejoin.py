"""A node back after longer than --tombstone-grace-s sets its records aside and joins as a new node, so no delete
comes back; a cluster stopped together, or a node on its own, keeps its records (and a node back sooner:
tests/test_membership_changes.py).

Real server processes with data dirs (tests/kept_cluster.py); two nodes with R=2, so each owns every key.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgpack
import pytest

from client import Client, ClusterClient
from server.datadir import DataDir
from server.rejoin import set_aside_if_away_too_long
from tests.kept_cluster import Start, entry, eventually, node, now_ms, states
from tests.servers import ServerProcess, free_port

READY2 = {"n1": "ready", "n2": "ready"}


def two_nodes(start_server: Start, data: Path, grace_s: float) -> tuple[ServerProcess, ServerProcess]:
    first = node(start_server, "n1", f"127.0.0.1:{free_port()}", args=settings(data, "n1", grace_s))
    second = node(start_server, "n2", first, args=settings(data, "n2", grace_s))
    eventually(lambda: all(states(server) == READY2 for server in (first, second)))
    return first, second


def settings(data: Path, name: str, grace_s: float) -> tuple[str, ...]:
    return ("--data-dir", str(data / name), "--tombstone-grace-s", str(grace_s))


def tombstones(server: ServerProcess) -> int:
    with Client(server.node, timeout_s=2.0) as direct:
        count: int = direct.stats()["tombstones"]
        return count


def test_a_node_away_longer_than_the_grace_sets_its_records_aside_and_brings_no_delete_back(
        start_server: Start, tmp_path: Path) -> None:
    first, second = two_nodes(start_server, tmp_path, grace_s=2)
    with ClusterClient(first.node, timeout_s=0.5) as table:
        table.mset({"kept": "1", "deleted": "1", "overwritten": "old"})
        assert second.stop() == 0
        assert table.delete("deleted")
        table.set("overwritten", "new")
    eventually(lambda: tombstones(first) == 0)  # the grace passed: no trace of the delete is left on n1

    again = node(start_server, "n2", first, args=settings(tmp_path, "n2", 2))
    eventually(lambda: all(states(server) == READY2 for server in (first, again)))
    with ClusterClient(first.node, timeout_s=2.0) as table:
        assert table.get("deleted") is None
    with Client(again.node, timeout_s=2.0) as direct:  # what it holds now, it pulled
        assert direct.mget(["kept", "deleted", "overwritten"]) == ["1", None, "new"]
    assert "set aside in" in again.log and "starts empty and joins as a new node" in again.log
    [discarded] = (tmp_path / "n2").glob("discarded-*")
    assert list(discarded.glob("journal.*")) and (discarded / "members").exists()


def test_a_node_on_its_own_keeps_its_records_however_long_it_was_away(start_server: Start,
                                                                       tmp_path: Path) -> None:
    alone = ("--data-dir", str(tmp_path), "--tombstone-grace-s", "0.2")
    server = start_server(*alone)
    with Client(server.node, timeout_s=2.0) as direct:
        direct.set("only-copy", "1")
    assert server.stop() == 0
    time.sleep(0.4)  # twice the grace
    again = start_server(*alone)
    with Client(again.node, timeout_s=2.0) as direct:
        assert direct.get("only-copy") == "1"
    assert not list(tmp_path.glob("discarded-*"))


def test_a_cluster_stopped_together_for_longer_than_the_grace_keeps_its_records(start_server: Start,
                                                                                  tmp_path: Path) -> None:
    first, second = two_nodes(start_server, tmp_path, grace_s=5)
    with ClusterClient(first.node, timeout_s=2.0) as table:
        table.mset({f"key{index}": str(index) for index in range(20)})
    assert first.stop() == 0
    assert second.stop() == 0
    time.sleep(5)  # the grace: but no member ran meanwhile, so no delete can have been missed
    # n1 finds no member up, n2 finds n1 up for a moment and holding nothing newer than n2's records.
    again = node(start_server, "n1", f"127.0.0.1:{free_port()}", args=settings(tmp_path, "n1", 5))
    again_too = node(start_server, "n2", again, args=settings(tmp_path, "n2", 5))
    assert "no other member answered: its records are kept" in again.log
    assert "no member ran or wrote since: its records are kept" in again_too.log
    for server in (again, again_too):
        assert "loaded 20 keys" in server.log
    assert not list(tmp_path.glob("*/discarded-*"))


def test_a_data_dir_without_a_last_ready_time_is_judged_by_when_its_files_were_written(
        start_server: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data_dir = DataDir(tmp_path / "n2")
    data_dir.lock()

    def files_of_n2_written_100_s_ago(n1_address: str) -> None:
        view = {name: entry(address, "ready", now_ms(), name) for name, address in (("n1", n1_address),
                                                                                     ("n2", "n2:1"))}
        (data_dir.path / "members").write_bytes(msgpack.packb(view))
        (data_dir.path / "journal.00000001").write_bytes(b"records")
        written_s = time.time() - 100
        for name in ("members", "journal.00000001"):
            os.utime(data_dir.path / name, (written_s, written_s))

    peer_data = ("--node-name", "n1", "--data-dir", str(tmp_path / "n1"))
    peer = start_server(*peer_data)
    with Client(peer.node, timeout_s=2.0) as direct:
        direct.set("written", "after n2 was away")
    assert peer.stop() == 0
    try:
        files_of_n2_written_100_s_ago(peer.node)
        assert set_aside_if_away_too_long(data_dir, "n2", grace_s=200, seeds=[]) is None  # not away long enough
        assert set_aside_if_away_too_long(data_dir, "n2", grace_s=50, seeds=[]) is None  # no member answers
        peer = start_server(*peer_data)  # it loads a record newer than n2's files
        files_of_n2_written_100_s_ago(peer.node)
        target = set_aside_if_away_too_long(data_dir, "n2", grace_s=50, seeds=[])
    finally:
        data_dir.unlock()
    assert target is not None and target.name.startswith("discarded-")
    assert sorted(path.name for path in target.iterdir()) == ["journal.00000001", "members"]
    assert {path.name for path in data_dir.path.iterdir()} == {"lock", target.name}
    assert "last written (it holds no last-ready time)" in caplog.text and "n1 ran or wrote since" in caplog.text
