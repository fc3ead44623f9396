"""The places docs/PROTOCOL.md once left open, as a real server answers them (issue 12, item 6)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from tests.servers import ServerProcess

Send = Callable[[Any], list[Any]]


def _sender(node: str) -> Iterator[Send]:
    context = zmq.Context()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.RCVTIMEO, 5000)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(f"tcp://{node}")

    def send(request: Any) -> list[Any]:
        socket.send(request if isinstance(request, bytes) else msgpack.packb(request))
        reply: list[Any] = msgpack.unpackb(socket.recv())
        return reply

    yield send
    socket.close()
    context.term()


@pytest.fixture
def send(server: ServerProcess) -> Iterator[Send]:
    yield from _sender(server.node)


def test_a_n_plus_2_elements_whose_last_is_not_a_map_is_wrong_arity(send: Send) -> None:
    last: object
    for last in (None, 5, "x", []):
        assert send(["set", "k", "v", last])[0] == 3
    assert send(["get", {}])[0] == 1  # N+1 elements: the map is the key
    assert send(["mset", {"a": "1"}, {}]) == [0, True]


def test_b_a_rid_on_a_batch_is_ignored_whatever_it_is(send: Send) -> None:
    element = ["incr", "n", 1, {"rid": "c:1"}]
    for rid in (12345, "z" * 500, None):
        assert send(["batch", [element], {"rid": rid}]) == [0, [[0, 1]]]  # the element's rid dedupes
    assert send(["batch", [["incr", "n", 1]], {"rid": "same"}]) == [0, [[0, 2]]]
    assert send(["batch", [["incr", "n", 1]], {"rid": "same"}]) == [0, [[0, 3]]]  # not deduplicated as a whole


def test_c_a_batch_holding_an_mget_nests_four_deep(send: Send) -> None:
    assert send(["batch", [["mget", ["a", "b"]]]]) == [0, [[0, [None, None]]]]


def test_g_an_integer_is_the_whole_value(send: Send) -> None:
    for text in ("123\n", " 1", "+1", "1.0", "-", "\uff11"):  # the last: a fullwidth digit one
        send(["set", "n", text])
        assert send(["incr", "n", 1])[0] == 5, text
    for text, result in (("-0", 1), ("007", 8), ("-9223372036854775808", -9223372036854775807)):
        send(["set", "n", text])
        assert send(["incr", "n", 1]) == [0, result]


def test_h_a_header_over_the_bound_and_over_the_frame_is_too_large_in_a_small_frame(send: Send) -> None:
    assert send(b"\x92\xa3get\xdd\xff\xff\xff\xff")[0] == 4  # array of 2^32-1, nothing behind it
    assert send(b"\x92\xa4mget\xdc\x27\x19\xa1a")[0] == 4  # 10,009 keys claimed, one there
    assert send(b"\x92\xa4mset\xdf\xff\xff\xff\xff")[0] == 4  # map
    assert send(b"\x92\xa4mget\xdc\x00\x14\xa1a")[0] == 1  # within the bound: only incomplete


def test_i_mget_and_mset_count_before_their_elements(send: Send) -> None:
    assert send(["mget", [1] + ["k"] * 10_000])[0] == 4
    assert send(["mset", {**{"k": 1}, **{f"k{i}": "v" for i in range(10_000)}}])[0] == 4
    assert send(["mget", ["a", 5, "x" * 2000]])[0] == 1  # then in order
    assert send(["mset", {"x" * 2000: "v", "b": 7}])[0] == 4  # pairs in frame order, key first
    assert send(["mset", {"b": 7, "x" * 2000: "v"}])[0] == 1


def test_j_a_batch_counts_once_and_its_elements_each_as_if_alone(send: Send) -> None:
    before = send(["stats"])[1]["ops"]
    reply = send(["batch", [["get", "a"], ["get"], ["batch", []], ["set", "a", "1"]]])
    assert [status for status, _ in reply[1]] == [0, 3, 1, 0]
    after = send(["stats"])[1]["ops"]
    grew = {op: after.get(op, 0) - before.get(op, 0) for op in after}
    assert grew == {"batch": 2, "get": 1, "set": 1, "stats": 1}


def test_k_the_decoder_bound_decides_which_check_catches_a_long_value(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--max-value-bytes", "10")  # the bound is then max_key_bytes, 1024
    for send in _sender(server.node):
        assert send(["set", 123, "x" * 500])[0] == 1  # within the bound: the key is checked first
        assert send(["set", "k", "x" * 500]) == [4, "value longer than 10 bytes"]
        assert send(["set", 123, "x" * 1025])[0] == 4  # over the bound: at decoding, before the key
        assert send(["nope", "x" * 1025])[0] == 4
        assert send(["nope", "x" * 600])[0] == 2
