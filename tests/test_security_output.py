"""Small requests that ask for a lot, against real servers with ``--max-memory 64mb``.

A 1.2 KB ``mget`` can ask for 300 MiB of replies, a peer can ask for replies
and never read them, and a 10 MB frame of empty arrays decodes, naively, to
700 MB of lists. With the memory cap, the server's peak resident memory
(VmHWM) must stay within the cap plus 50 %, the right typed error must come
back, and the server must go on answering.
"""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq

from client import Client
from common.errors import InvalidRequestError
from common.protocol import Status, decode_reply, encode_batch, encode_request
from tests.hostile import RawPeer, read_status_kib
from tests.servers import ServerProcess

MIB = 1024 * 1024
CAP_BYTES = 64 * MIB
PEAK_LIMIT_BYTES = CAP_BYTES * 3 // 2


@pytest.fixture
def capped(start_server):
    """A server capped at 64 MiB holding a 1 MiB value under ``big``."""
    server = start_server("--max-memory", "64mb")
    with Client(server.node, timeout_s=10) as table:
        table.set("big", "x" * MIB)
    return server


def _peak_bytes(server: ServerProcess) -> int:
    return read_status_kib(server.proc.pid, "VmHWM") * 1024


def _answers_ping(server: ServerProcess) -> bool:
    with Client(server.node, timeout_s=5, retries=0) as table:
        return table.ping()


def test_mget_asking_for_300_mib_is_refused_before_the_reply_is_built(capped):
    peer = RawPeer(capped.node)
    try:
        peer.send(encode_request("mget", ["big"] * 300))
        status, message = decode_reply(peer.recv(30))
    finally:
        peer.close()
    assert status == Status.TOO_LARGE and "reply limit" in message
    with Client(capped.node, timeout_s=10) as table:
        with pytest.raises(InvalidRequestError) as refused:
            table.mget(["big"] * 30)  # 30 MiB: over what the cap leaves one reply
        assert refused.value.code == Status.TOO_LARGE
        assert table.mget(["big", "missing"]) == ["x" * MIB, None]
    assert _peak_bytes(capped) <= PEAK_LIMIT_BYTES
    assert _answers_ping(capped)


def test_in_a_batch_the_replies_add_up(capped):
    peer = RawPeer(capped.node)
    items = [encode_request("get", "big")] * 40 + [encode_request("set", "late", "write")]
    try:
        peer.send(encode_batch(items))
        status, replies = decode_reply(peer.recv(30))
    finally:
        peer.close()
    assert status == Status.OK and len(replies) == len(items)
    answered = [reply for reply in replies[:40] if reply[0] == Status.OK]
    assert 0 < len(answered) < 40 and all(reply == [0, "x" * MIB] for reply in answered)
    assert all(reply[0] == Status.TOO_LARGE for reply in replies[len(answered):40])
    with Client(capped.node, timeout_s=10) as table:  # the write after them: run, or not run and not applied
        assert table.get("late") == ("write" if replies[-1] == [Status.OK, True] else None)
    assert _peak_bytes(capped) <= PEAK_LIMIT_BYTES


def test_a_peer_that_never_reads_600_large_replies_is_disconnected(capped):
    flood = RawPeer(capped.node)
    try:
        request = encode_request("get", "big")
        for _ in range(600):  # 600 MiB of replies if they were all queued
            flood.send(request)
        with Client(capped.node, timeout_s=5) as table:
            deadline = time.monotonic() + 30
            while table.stats()["output"]["disconnected_peers"] == 0:
                assert time.monotonic() < deadline, "the peer was never disconnected"
                time.sleep(0.05)
            while table.stats()["output"]["queued_bytes"]:  # its queue is dropped with it
                assert time.monotonic() < deadline, "its queued replies were never released"
                time.sleep(0.05)
            assert table.ping()
            assert table.get("big") == "x" * MIB
            output = table.stats()["output"]
    finally:
        flood.close()
    assert output["disconnected_peers"] == 1
    assert _peak_bytes(capped) <= PEAK_LIMIT_BYTES
    assert "disconnected a peer that does not read its replies" in capped.log


def test_a_10_mb_frame_of_empty_arrays_is_refused_within_the_cap(capped):
    inner = b"\xdc" + (10_000).to_bytes(2, "big") + b"\x90" * 10_000  # 10,000 empty arrays, 1 byte each
    count = 10 * 1000 * 1000 // len(inner)
    frame = b"\x92\xa4mget\xdc" + count.to_bytes(2, "big") + inner * count
    peer = RawPeer(capped.node)
    try:
        peer.send(frame)
        status, message = decode_reply(peer.recv(30))
    finally:
        peer.close()
    assert status == Status.TOO_LARGE and "msgpack values" in message
    assert _peak_bytes(capped) <= PEAK_LIMIT_BYTES
    assert _answers_ping(capped)
    with Client(capped.node, timeout_s=5) as table:
        assert table.get("big") == "x" * MIB


def test_a_peer_whose_queue_overflows_never_gets_replies_out_of_order(start_server):
    """Replies to a peer that does not read, once its queue is full, are never
    sent past a dropped one: what it reads later is its first replies in order,
    and nothing after a gap (a pipelining client matches replies by order)."""
    server = start_server()
    count, value = 100_000, "v" * 1000  # 100 MB of replies: far more than the kernel's buffers take
    with Client(server.node, timeout_s=5.0, retries=0) as setup:
        setup.mset({f"k{i}": f"{i}:{value}" for i in range(0, 100)})
    context = zmq.Context()
    peer = context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.RCVHWM, 10)
    peer.setsockopt(zmq.RCVBUF, 4096)
    peer.setsockopt(zmq.SNDHWM, 0)
    try:
        peer.connect(f"tcp://{server.node}")
        for i in range(count):
            peer.send(encode_request("get", f"k{i % 100}"))
        with Client(server.node, timeout_s=5.0, retries=0) as other:
            deadline = time.monotonic() + 60
            while not other.stats()["output"]["dropped_replies"]:  # our queue is full
                assert time.monotonic() < deadline, "the test never filled the peer's queue"
                time.sleep(0.01)
        replies = []  # read while the server still answers the rest: room opens in our queue
        while peer.poll(1000):
            replies.append(msgpack.unpackb(peer.recv(), raw=False))
    finally:
        peer.close(linger=0)
        context.term()
    assert 0 < len(replies) < count
    assert replies == [[0, f"{i % 100}:{value}"] for i in range(len(replies))]
