"""Versions, tombstones and the versioned ops (getv, putv, scanv, node, ``rec``) against real server processes.

What a cluster client and the nodes rely on (docs/PROTOCOL.md, "Versions"):
every write is versioned by the node's clock, a delete leaves a tombstone
that ordinary reads never see, ``putv`` keeps the newer of two versions, and
all of it survives a restart.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from common.limits import MAX_BATCH_KEYS, MAX_VERSION_AHEAD_S
from common.protocol import Status, decode_reply
from server.store import SCAN_POSITIONS
from tests.hostile import RawPeer


class Peer:
    """Raw requests to one node: [op, *args] in, (status, payload) out."""

    def __init__(self, node: str) -> None:
        self.raw = RawPeer(node)

    def __call__(self, op: str, *args: Any) -> tuple[int, Any]:
        self.raw.send(msgpack.packb([op, *args]))
        return decode_reply(self.raw.recv(10.0))

    def ok(self, op: str, *args: Any) -> Any:
        status, payload = self(op, *args)
        assert status == Status.OK, payload
        return payload

    def close(self) -> None:
        self.raw.close()


@pytest.fixture
def node(start_server):
    return start_server("--node-name", "node-a")


@pytest.fixture
def peer(node):
    peer = Peer(node.node)
    yield peer
    peer.close()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _all_records(peer: Peer, count: int = 1000) -> list[list[Any]]:
    records: list[list[Any]] = []
    cursor = 0
    while True:
        cursor, page = peer.ok("scanv", cursor, count)
        records += page
        if cursor == 0:
            return records


# -- versions -----------------------------------------------------------------------------------


def test_every_write_stores_a_newer_version_named_after_the_node(peer):
    before = _now_ms()
    seen = []
    for request in (["set", "k", "1"], ["incr", "k", 2], ["cas", "k", "3", "4"], ["mset", {"k": "5"}],
                    ["set", "k", "6", {"xx": True}]):
        peer.ok(*request)
        [record] = peer.ok("getv", ["k"])
        seen.append(record[2])
    assert record[:2] == ["k", "6"] and record[3] is None
    assert all(node == "node-a" for _, _, node in seen)
    assert seen == sorted(seen) and len({tuple(v) for v in seen}) == len(seen)
    assert before <= seen[0][0] <= _now_ms()


def test_a_failed_condition_is_not_a_write(peer):
    peer.ok("set", "k", "1")
    [before] = peer.ok("getv", ["k"])
    assert peer.ok("set", "k", "2", {"nx": True}) is False
    assert peer.ok("cas", "k", "nope", "3") is False
    assert peer.ok("getv", ["k"]) == [before]


def test_expiry_is_not_a_write_and_leaves_no_tombstone(peer):
    peer.ok("set", "k", "v", {"ttl_s": 0.2})
    [record] = peer.ok("getv", ["k"])
    assert record[3] is not None and record[3] > time.time()
    time.sleep(0.4)
    assert peer.ok("getv", ["k"]) == [None]
    assert peer.ok("stats")["tombstones"] == 0


# -- tombstones ---------------------------------------------------------------------------------


def test_a_delete_leaves_a_tombstone_that_no_ordinary_op_sees(peer):
    peer.ok("mset", {"gone": "1", "kept": "2"})
    assert peer.ok("del", "gone") is True
    [tombstone] = peer.ok("getv", ["gone"])
    assert tombstone[0] == "gone" and tombstone[1] is None and tombstone[3] is None
    assert tombstone[2][2] == "node-a"
    assert peer.ok("get", "gone") is None
    assert peer.ok("mget", ["gone", "kept"]) == [None, "2"]
    assert peer.ok("exists", "gone") is False
    assert peer.ok("ttl", "gone") == -2
    assert peer.ok("keys", "*", 0, 1000)[1] == ["kept"]
    assert peer.ok("del", "gone") is False
    assert peer.ok("cas", "gone", "1", "x") is False
    stats = peer.ok("stats")
    assert (stats["keys"], stats["tombstones"]) == (1, 1)
    assert peer.ok("incr", "gone", 5) == 5  # missing counts as 0, as for a key never set
    assert peer.ok("del", "gone") is True
    assert peer.ok("set", "gone", "back", {"nx": True}) is True
    assert peer.ok("getv", ["gone"])[0][1] == "back"
    assert peer.ok("stats")["tombstones"] == 0


def test_a_delete_of_a_missing_key_leaves_nothing(peer):
    assert peer.ok("del", "never") is False
    assert peer.ok("getv", ["never"]) == [None]
    assert peer.ok("stats")["tombstones"] == 0


def test_tombstones_are_collected_after_the_grace_period(start_server):
    node = start_server("--tombstone-grace-s", "0.5")
    peer = Peer(node.node)
    try:
        peer.ok("mset", {f"k{i}": "v" for i in range(50)})
        for i in range(50):
            peer.ok("del", f"k{i}")
        assert peer.ok("stats")["tombstones"] == 50
        deadline = time.monotonic() + 10
        while peer.ok("stats")["tombstones"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert peer.ok("stats")["tombstones"] == 0
        assert peer.ok("getv", ["k0", "k49"]) == [None, None]
    finally:
        peer.close()


def test_memory_figure_counts_tombstones_and_drops_them_when_collected(start_server):
    node = start_server("--tombstone-grace-s", "0.5")
    peer = Peer(node.node)
    try:
        empty = peer.ok("stats")["memory_bytes"]
        peer.ok("mset", {f"key:{i}": "v" for i in range(100)})
        for i in range(100):
            peer.ok("del", f"key:{i}")
        # Each tombstone's record, key and version: 87 bytes on the compact table, more on the Python one.
        assert peer.ok("stats")["memory_bytes"] >= empty + 100 * 64
        deadline = time.monotonic() + 10
        while peer.ok("stats")["tombstones"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert peer.ok("stats")["memory_bytes"] == empty
    finally:
        peer.close()


# -- putv: write if newer -------------------------------------------------------------------------


def test_putv_keeps_the_newer_version_and_never_resurrects_a_delete(peer):
    now = _now_ms()
    old, new, newer = [now - 2000, 0, "b"], [now - 1000, 0, "b"], [now - 1000, 1, "a"]
    assert peer.ok("putv", [["k", "new", new, None]]) == [True]
    assert peer.ok("putv", [["k", "old", old, None], ["k", "new", new, None]]) == [False, False]  # a copy again
    assert peer.ok("get", "k") == "new"
    assert peer.ok("putv", [["k", None, newer, None]]) == [True]  # a newer delete
    assert peer.ok("get", "k") is None and peer.ok("stats")["tombstones"] == 1
    assert peer.ok("putv", [["k", "stale", new, None]]) == [False]  # an older copy stays deleted
    assert peer.ok("getv", ["k"]) == [["k", None, newer, None]]
    # The node name breaks a tie of ms and counter.
    assert peer.ok("putv", [["t", "from a", [now, 0, "a"], None], ["t", "from b", [now, 0, "b"], None]]) == [True,
                                                                                                          True]
    assert peer.ok("putv", [["t", "from a again", [now, 0, "a"], None]]) == [False]
    assert peer.ok("get", "t") == "from b"


def test_a_local_write_after_putv_is_newer_than_what_putv_brought(peer):
    ahead = [_now_ms() + 30_000, 7, "zzz"]  # a node whose clock runs 30 s ahead
    assert peer.ok("putv", [["k", "copied", ahead, None]]) == [True]
    peer.ok("set", "k", "local")
    [record] = peer.ok("getv", ["k"])
    assert record[1] == "local" and record[2] > ahead and record[2][2] == "node-a"


def test_putv_carries_the_deadline_and_an_expired_record_removes_the_older_value(peer):
    now = _now_ms()
    deadline = time.time() + 100
    assert peer.ok("putv", [["k", "v", [now - 10, 0, "b"], deadline]]) == [True]
    assert 99 < peer.ok("ttl", "k") <= 100
    assert peer.ok("putv", [["k", "v2", [now - 5, 0, "b"], time.time() - 1]]) == [True]
    assert peer.ok("get", "k") is None and peer.ok("getv", ["k"]) == [None]


HOSTILE_RECORDS = [
    ("not an array", "x"),
    ("a record of 3", [["k", "v", [1, 0, "n"]]]),
    ("a record of 5", [["k", "v", [1, 0, "n"], None, "extra"]]),
    ("a key not a str", [[5, "v", [1, 0, "n"], None]]),
    ("a value not a str", [["k", 5, [1, 0, "n"], None]]),
    ("a version not an array", [["k", "v", 17, None]]),
    ("a version of 2", [["k", "v", [1, 0], None]]),
    ("a negative ms", [["k", "v", [-1, 0, "n"], None]]),
    ("a float ms", [["k", "v", [1.5, 0, "n"], None]]),
    ("a huge ms", [["k", "v", [2**64 - 1, 0, "n"], None]]),
    ("a huge counter", [["k", "v", [1, 2**32, "n"], None]]),
    ("a counter past 65535", [["k", "v", [1, 65536, "n"], None]]),
    ("a bool counter", [["k", "v", [1, True, "n"], None]]),
    ("a node not a str", [["k", "v", [1, 0, 7], None]]),
    ("a node of bytes", [["k", "v", [1, 0, b"n"], None]]),
    ("a node too long", [["k", "v", [1, 0, "n" * 256], None]]),
    ("a deadline not a number", [["k", "v", [1, 0, "n"], "soon"]]),
    ("a deadline of 0", [["k", "v", [1, 0, "n"], 0]]),
    ("a deadline 200 years ahead", [["k", "v", [1, 0, "n"], time.time() + 200 * 365 * 86400]]),
    ("a version far in the future", [["k", "v", [2**62, 0, "n"], None]]),
    ("a good record, then a bad one", [["good", "v", [1, 0, "n"], None], ["k", "v", [1, 0, 7], None]]),
]


@pytest.mark.parametrize("records", [r for _, r in HOSTILE_RECORDS], ids=[name for name, _ in HOSTILE_RECORDS])
def test_a_malformed_putv_is_refused_and_changes_nothing(peer, records):
    peer.ok("set", "k", "before")
    table = _all_records(peer)
    status, message = peer("putv", records)
    assert status == Status.BAD_REQUEST and isinstance(message, str) and message
    assert _all_records(peer) == table
    peer.ok("set", "k2", "after")  # the clock did not move ahead either
    assert peer.ok("getv", ["k2"])[0][2][0] <= _now_ms() + 1000


def test_too_many_records_are_refused_before_any_is_looked_at(peer):
    status, _ = peer("putv", [["k", "v", [1, 0, "n"], None]] * (MAX_BATCH_KEYS + 1))
    assert status == Status.TOO_LARGE
    assert peer.ok("getv", ["k"]) == [None]


def test_a_version_is_accepted_within_the_bound_ahead_of_the_clock_and_refused_past_it(peer):
    past_bound = [int((time.time() + 2 * MAX_VERSION_AHEAD_S) * 1000), 0, "fast"]
    status, message = peer("putv", [["k", "v", past_bound, None]])
    assert status == Status.BAD_REQUEST and "ahead" in message
    assert peer.ok("getv", ["k"]) == [None]
    ahead = [int((time.time() + MAX_VERSION_AHEAD_S / 2) * 1000), 0, "fast"]
    assert peer.ok("putv", [["k", "v", ahead, None]]) == [True]


def test_of_two_different_records_of_one_version_the_delete_then_the_larger_value_wins(peer):
    version = [_now_ms() - 1000, 0, "faulty"]
    assert peer.ok("putv", [["k", "b", version, None], ["k", "a", version, None], ["k", "c", version, None]]) == [
        True, False, True]
    assert peer.ok("putv", [["k", None, version, None], ["k", "d", version, None]]) == [True, False]
    assert peer.ok("getv", ["k"]) == [["k", None, version, None]]


def test_a_putv_retried_with_its_request_id_gets_its_first_answer(peer):
    request = [["k", "v", [_now_ms() - 1000, 0, "b"], None]]
    assert peer.ok("putv", request, {"rid": "copy-1"}) == [True]
    assert peer.ok("putv", request, {"rid": "copy-1"}) == [True]  # the retry is not applied again
    assert peer.ok("putv", request, {"rid": "copy-2"}) == [False]  # a new request is, and finds the same version


# -- reply limits -------------------------------------------------------------------------------


def test_getv_and_scanv_keep_within_the_reply_limit(start_server):
    node = start_server("--max-reply-bytes", "8192")
    peer = Peer(node.node)
    try:
        peer.ok("set", "big", "x" * 10_000)
        status, message = peer("getv", ["big"])
        assert status == Status.TOO_LARGE and "reply limit" in message
        peer.ok("del", "big")
        peer.ok("mset", {f"k{i}": "y" * 3000 for i in range(12)})
        records = _all_records(peer)
        assert sorted(record[0] for record in records) == sorted(["big"] + [f"k{i}" for i in range(12)])
    finally:
        peer.close()


# -- scanv --------------------------------------------------------------------------------------


def test_scanv_pages_through_every_record_and_tombstone_once(peer):
    peer.ok("mset", {f"k{i}": f"v{i}" for i in range(3000)})
    for i in range(0, 3000, 3):
        peer.ok("del", f"k{i}")
    records = _all_records(peer, count=50)
    keys = [record[0] for record in records]
    assert len(keys) == len(set(keys)) == 3000
    by_key = {record[0]: record for record in records}
    assert by_key["k0"][1] is None and by_key["k1"][1] == "v1"
    assert all(record == peer.ok("getv", [record[0]])[0] for record in records[:100])


def test_scanv_refuses_a_cursor_of_another_run(peer):
    for i in range(20):
        peer.ok("set", f"k{i}", "v")
    cursor, _ = peer.ok("scanv", 0, 1)
    tag, position = divmod(cursor, SCAN_POSITIONS)
    assert tag >= 1 and position > 0
    # The same position under another run's tag (a run's tag is one of 1 .. 2**32 // SCAN_POSITIONS - 1).
    other_run = (tag % (2**32 // SCAN_POSITIONS - 1) + 1) * SCAN_POSITIONS + position
    status, _ = peer("scanv", other_run, 10)
    assert status == Status.BAD_CURSOR


# -- node ---------------------------------------------------------------------------------------


def test_node_says_who_the_node_is(node, peer):
    # A cluster of one (no --join): ready, at NAME:PORT, with its view's epoch (tests/test_membership.py has more).
    answer = peer.ok("node")
    assert answer == {"name": "node-a", "address": f"node-a:{node.port}", "state": "ready",
                      "epoch": peer.ok("members")["epoch"], "up_since_ms": answer["up_since_ms"],
                      "loaded_until_ms": 0}


def test_the_node_name_defaults_to_the_host_name(start_server):
    import socket

    node = start_server()
    peer = Peer(node.node)
    try:
        assert peer.ok("node")["name"] == socket.gethostname()
        peer.ok("set", "k", "v")
        assert peer.ok("getv", ["k"])[0][2][2] == socket.gethostname()
    finally:
        peer.close()


# -- rec: the records a write left ----------------------------------------------------------------


def test_rec_answers_each_write_with_the_records_it_left(peer):
    result, [record] = peer.ok("set", "k", "1", {"rec": True})
    assert result is True and record == peer.ok("getv", ["k"])[0] and record[1] == "1"
    assert peer.ok("incr", "k", 4, {"rec": True}) == [5, peer.ok("getv", ["k"])]
    assert peer.ok("cas", "k", "5", "6", {"rec": True, "ttl_s": 60})[1][0][1:] == ["6", *peer.ok("getv", ["k"])[0][2:]]
    result, records = peer.ok("mset", {"a": "1", "b": "2"}, {"rec": True})
    assert result is True and records == peer.ok("getv", ["a", "b"])
    assert records[0][2] == records[1][2] > record[2]  # one write, one version, newer than the set's
    result, [tombstone] = peer.ok("del", "a", {"rec": True})
    assert result is True and tombstone[1] is None and tombstone == peer.ok("getv", ["a"])[0]


def test_rec_on_a_failed_condition_answers_the_current_record_or_nil(peer):
    peer.ok("set", "k", "held")
    [held] = peer.ok("getv", ["k"])
    assert peer.ok("set", "k", "other", {"nx": True, "rec": True}) == [False, [held]]
    assert peer.ok("cas", "k", "wrong", "x", {"rec": True}) == [False, [held]]
    assert peer.ok("set", "missing", "x", {"xx": True, "rec": True}) == [False, [None]]
    assert peer.ok("del", "missing", {"rec": True}) == [False, [None]]


def test_without_rec_replies_are_those_of_protocol_1(peer):
    assert peer.ok("set", "k", "1") is True
    assert peer.ok("set", "k", "1", {"rec": False}) is True
    assert peer.ok("incr", "k", 1) == 2
    assert peer.ok("del", "k") is True


@pytest.mark.parametrize("request_", [["set", "k", "x", {"rec": "yes"}], ["set", "k", "x", {"rec": 1}],
                                      ["get", "k", {"rec": True}], ["putv", [], {"rec": True}]],
                         ids=["a str", "an int", "on a read", "on putv"])
def test_a_bad_rec_is_refused_and_changes_nothing(peer, request_):
    peer.ok("set", "k", "before")
    [before] = peer.ok("getv", ["k"])
    status, _ = peer(*request_)
    assert status == Status.BAD_REQUEST
    assert peer.ok("getv", ["k"]) == [before]


# -- durability ---------------------------------------------------------------------------------


def _versioned_writes(peer: Peer) -> None:
    peer.ok("mset", {f"k{i}": f"v{i}" for i in range(20)})
    peer.ok("set", "ttl", "v", {"ttl_s": 600})
    for i in range(5):
        peer.ok("del", f"k{i}")
    peer.ok("putv", [["copied", "c", [_now_ms() - 5000, 3, "other"], None],
                     ["deleted elsewhere", None, [_now_ms() - 4000, 0, "other"], None],
                     ["ahead", "a", [_now_ms() + 30_000, 0, "fast"], None]])


@pytest.mark.parametrize("fsync", ["always", "everysec", "no"])
def test_versions_and_tombstones_survive_a_restart(start_server, tmp_path, fsync):
    data = str(tmp_path / "data")
    first = start_server("--data-dir", data, "--fsync", fsync, "--node-name", "node-a")
    peer = Peer(first.node)
    _versioned_writes(peer)
    table = sorted(_all_records(peer))
    peer.close()
    assert first.stop() == 0
    again = start_server("--data-dir", data, "--fsync", fsync, "--node-name", "node-a")
    peer = Peer(again.node)
    try:
        assert sorted(_all_records(peer)) == table
        assert peer.ok("stats")["tombstones"] == 6
        peer.ok("set", "later", "x")  # the clock moved past the newest version loaded (30 s ahead)
        assert peer.ok("getv", ["later"])[0][2] > peer.ok("getv", ["ahead"])[0][2]
    finally:
        peer.close()


def test_versions_and_tombstones_survive_a_compaction_and_a_kill(start_server, tmp_path):
    data = str(tmp_path / "data")
    first = start_server("--data-dir", data, "--fsync", "always", "--compact-after-bytes", "2000")
    peer = Peer(first.node)
    _versioned_writes(peer)
    for i in range(200):  # enough journal to compact
        peer.ok("set", f"filler{i}", "x" * 20)
    deadline = time.monotonic() + 10
    while not peer.ok("stats")["persistence"]["compactions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert peer.ok("stats")["persistence"]["compactions"] >= 1
    table = sorted(_all_records(peer))
    peer.close()
    first.kill()
    again = start_server("--data-dir", data, "--fsync", "always")
    peer = Peer(again.node)
    try:
        assert sorted(_all_records(peer)) == table
    finally:
        peer.close()


#: A data dir written by the server before versions (the main tree's of 2026-12-01): a snapshot of 60 keys
#: (MLSNAP2), then a journal (MLJRNL2) that sets "journaled", deletes "snap0", sets "expiring" with a TTL.
BEFORE_VERSIONS = Path(__file__).parent / "data" / "before-versions"


def test_a_data_dir_written_before_versions_loads_with_version_zero(start_server, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(BEFORE_VERSIONS, data)
    assert (data / "snapshot.00000002").read_bytes().startswith(b"MLSNAP2\n")
    new = start_server("--data-dir", str(data))
    peer = Peer(new.node)
    try:
        assert peer.ok("getv", ["snap1", "journaled", "snap0"]) == [
            ["snap1", "x" * 20, [0, 0, ""], None], ["journaled", "j", [0, 0, ""], None], None]
        [expiring] = peer.ok("getv", ["expiring"])
        assert expiring[:3] == ["expiring", "e", [0, 0, ""]] and expiring[3] > time.time()
        assert peer.ok("stats")["keys"] == 61 and peer.ok("stats")["tombstones"] == 0
        # Any versioned copy is newer than data from before versions.
        assert peer.ok("putv", [["snap1", "newer", [1, 0, "n"], None]]) == [True]
        peer.ok("del", "journaled")
    finally:
        peer.close()
    assert new.stop() == 0
    assert (data / "journal.00000002").read_bytes() == (BEFORE_VERSIONS / "journal.00000002").read_bytes()
    again = start_server("--data-dir", str(data))
    peer = Peer(again.node)
    try:
        assert peer.ok("getv", ["snap1"]) == [["snap1", "newer", [1, 0, "n"], None]]
        assert peer.ok("getv", ["journaled"])[0][1] is None  # its tombstone, in a journal of the new format
    finally:
        peer.close()
