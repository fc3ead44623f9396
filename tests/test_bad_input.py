"""Hostile and malformed frames against a live server: error replies, no crash, no change."""

from __future__ import annotations

import msgpack
import pytest
import zmq

from client import Client
from common.protocol import Status, decode_reply


@pytest.fixture
def raw(server):
    """A DEALER socket to the server; send frames, receive replies (empty delimiter handled)."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{server.node}")

    def send(*frames: bytes) -> tuple[int, object]:
        sock.send_multipart([b"", *frames])
        reply = sock.recv_multipart()
        assert reply[0] == b""
        return decode_reply(reply[-1])

    yield send
    sock.close()
    context.term()


def nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


BAD_FRAMES = {
    "not msgpack": (b"hello world", Status.BAD_REQUEST),
    "empty": (b"", Status.BAD_REQUEST),
    "not a list": (msgpack.packb({"op": "set"}), Status.BAD_REQUEST),
    "a bare string": (msgpack.packb("set"), Status.BAD_REQUEST),
    "wrong arity": (msgpack.packb(["set", "only-key"]), Status.WRONG_ARITY),
    "unknown op": (msgpack.packb(["flushall"]), Status.UNKNOWN_OP),
    "key over the limit": (msgpack.packb(["set", "k" * 2000, "v"]), Status.TOO_LARGE),
    "invalid utf-8": (b"\x93\xa3set\xa1k\xa2\xc3\x28", Status.BAD_REQUEST),
    "binary value": (b"\x93\xa3set\xa1k\xc4\x01x", Status.BAD_REQUEST),
    "deeply nested": (b"\x93\xa3set\xa1k" + nested(100_000), Status.BAD_REQUEST),
    "huge array header": (b"\x93\xa3set\xa1k\xdd\xff\xff\xff\xff", Status.TOO_LARGE),
    "huge map header": (b"\x92\xa4mset\xdf\xff\xff\xff\xff", Status.TOO_LARGE),
    "huge string header": (b"\x93\xa3set\xa1k\xdb\xff\xff\xff\xff", Status.BAD_REQUEST),
    "value over the limit": (msgpack.packb(["set", "k", "x" * (16 * 2**20 + 1)]), Status.TOO_LARGE),
    "binary option name": (bytes.fromhex("92a470696e6782c40001a3666f6f01"), Status.BAD_REQUEST),
    "truncated": (msgpack.packb(["set", "k", "v"])[:-1], Status.BAD_REQUEST),
    "trailing bytes": (msgpack.packb(["set", "k", "v"]) + b"\x00", Status.BAD_REQUEST),
}


@pytest.mark.parametrize("name", BAD_FRAMES)
def test_bad_frame_gets_an_error_reply_and_changes_nothing(server, raw, name):
    frame, status = BAD_FRAMES[name]
    with Client(server.node, timeout_s=3) as table:
        table.set("k", "original")
        code, message = raw(frame)
        assert code == status, message
        assert isinstance(message, str) and message
        assert table.ping()
        assert table.get("k") == "original"
        assert table.stats()["keys"] == 1


def test_more_than_one_body_frame_is_refused(server, raw):
    code, message = raw(msgpack.packb(["set", "k", "v"]), b"extra")
    assert code == Status.BAD_REQUEST and "one body frame" in message
    with Client(server.node) as table:
        assert table.get("k") is None


def test_a_message_over_maxmsgsize_is_dropped_and_the_server_lives_on(start_server):
    server = start_server("--max-message-bytes", "4096", "--max-value-bytes", "1000000")
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{server.node}")
    try:
        sock.send_multipart([b"", msgpack.packb(["set", "big", "x" * 100_000])])
        assert sock.poll(500) == 0  # ZeroMQ drops the peer; no reply comes
    finally:
        sock.close()
        context.term()
    with Client(server.node, timeout_s=2) as table:
        assert table.ping()
        assert table.get("big") is None
