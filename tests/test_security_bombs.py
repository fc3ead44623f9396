"""msgpack bombs: headers that claim more than they carry are refused fast and cheaply.

Each frame is a few bytes to a few KB that would, decoded naively, make the
server reserve megabytes or gigabytes. The server must answer each with an
error in well under 100 ms, and its peak resident memory (VmHWM, which also
catches short-lived allocations) must grow by less than 10 MB over all of them.
"""

from __future__ import annotations

import time

import pytest

from client import Client
from common.protocol import Status, decode_reply
from tests.hostile import RawPeer, read_status_kib

MB = 1024 * 1024

BOMBS = {
    "array of 4G elements": b"\xdd\xff\xff\xff\xff",
    "map of 4G entries": b"\xdf\xff\xff\xff\xff",
    "string of 4 GB": b"\x92\xa3get\xdb\xff\xff\xff\xff",
    "binary of 4 GB": b"\x92\xa3get\xc6\xff\xff\xff\xff",
    "ext of 4 GB": b"\x92\xa3get\xc9\xff\xff\xff\xff\x01",
    "mget of 4G keys": b"\x92\xa4mget\xdd\xff\xff\xff\xff",
    "mset of 4G pairs": b"\x92\xa4mset\xdf\xff\xff\xff\xff",
    "1024 nested arrays each claiming 10,000": b"\x92\xa4mget" + b"\xdc\x27\x10" * 1024,
    "mget whose keys are arrays claiming 10,000": b"\x92\xa4mget\xdc\x27\x10" + b"\xdc\x27\x10" * 2000,
    "mset whose values nest arrays": b"\x92\xa4mset\x81\xa1k" + b"\xdc\x27\x10" * 1024,
    "maps nested past the stack": b"\x92\xa3set" + b"\x81\xa1k" * 5000,
    "options map claiming 4G": b"\x93\xa3get\xa1k\xdf\xff\xff\xff\xff",
    "2000 arrays claiming 65535 in a set": b"\x93\xa3set\xa1k" + b"\xdc\xff\xff" * 2000,
}


@pytest.fixture
def peer(server):
    raw = RawPeer(server.node)
    yield raw
    raw.close()


@pytest.mark.parametrize("name", list(BOMBS))
def test_each_bomb_is_refused_in_under_100_ms(server, peer, name):
    peer.send(b"warm")
    peer.recv(5)
    started = time.monotonic()
    peer.send(BOMBS[name])
    status, message = decode_reply(peer.recv(5))
    elapsed = time.monotonic() - started
    assert status in (Status.BAD_REQUEST, Status.TOO_LARGE, Status.WRONG_ARITY), message
    assert elapsed < 0.1, f"{name}: {elapsed * 1000:.1f} ms"


def test_all_bombs_together_grow_peak_memory_by_under_10_mb(server, peer):
    with Client(server.node) as table:
        table.set("kept", "value")
    pid = server.proc.pid
    before_kib = read_status_kib(pid, "VmHWM")
    for _ in range(20):
        for frame in BOMBS.values():
            peer.send(frame)
        for _ in BOMBS:
            status, _ = decode_reply(peer.recv(5))
            assert status != Status.OK
    growth = (read_status_kib(pid, "VmHWM") - before_kib) * 1024
    assert growth < 10 * MB, f"peak RSS grew {growth / MB:.1f} MB"
    with Client(server.node) as table:
        assert table.get("kept") == "value"
        assert table.stats()["keys"] == 1
