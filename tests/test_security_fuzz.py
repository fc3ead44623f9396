"""Fuzzing the request path: no input crashes it, and garbage never changes the table.

Two levels: hypothesis drives :func:`decode_request` and :class:`Handler`
directly (no socket), and a live test pipelines 100,000 random and mutated
frames into a real server.
"""

from __future__ import annotations

import random
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client import Client
from common.ops import WRITE_OPS
from common.protocol import ProtocolError, decode_reply, decode_request, encode_request
from server.handler import Handler
from server.store import Store
from tests.hostile import RawPeer

VALID = [
    encode_request("ping"), encode_request("get", "k"), encode_request("set", "k", "v", options={"ttl_s": 5}),
    encode_request("del", "k"), encode_request("exists", "k"), encode_request("mget", ["a", "b", "c"]),
    encode_request("mset", {"a": "1", "b": "2"}), encode_request("keys", "*", 0, 10), encode_request("ttl", "k"),
    encode_request("incr", "n", 1, options={"rid": "x:1"}), encode_request("cas", "k", "v", "w"),
    encode_request("stats"), encode_request("mget", [str(i) for i in range(40)]),
]

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from(["get", "set", "mget", "mset", "keys", "incr", "cas"])
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=20,
)


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.6:
            at = rng.randrange(len(data) + 1)
            data.insert(at, rng.choice((0xDC, 0xDD, 0xDE, 0xDF, 0xDB, 0xC1, rng.randrange(256))))
        elif choice < 0.8 and data:
            del data[rng.randrange(len(data)):]
        else:
            data += rng.randbytes(rng.randint(1, 8))
    return bytes(data)


def _assert_valid_reply(reply: bytes) -> int:
    status, _ = decode_reply(reply)
    return status


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_decoder_and_handler_survive_any_bytes(frame):
    try:
        decode_request(frame)
    except ProtocolError:
        pass
    _assert_valid_reply(Handler(Store()).handle(frame))


@settings(max_examples=400, deadline=None)
@given(st.lists(msgpack_values, min_size=1, max_size=6))
def test_handler_answers_any_msgpack_array(items):
    handler = Handler(Store())
    handler.store.put("kept", "value", None)
    frame = msgpack.packb(items, use_bin_type=True)
    status = _assert_valid_reply(handler.handle(frame))
    op = items[0] if items else None
    if status != 0 or not isinstance(op, str) or op not in WRITE_OPS:
        assert handler.store.get("kept") == "value" and len(handler.store) == 1


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(VALID), st.randoms(use_true_random=False))
def test_handler_survives_mutated_valid_frames(frame, rng):
    _assert_valid_reply(Handler(Store()).handle(_mutate(rng, frame)))


def _harmless(frame: bytes) -> bool:
    """True unless the frame is a valid write (which may rightly change the table)."""
    try:
        op, _, _ = decode_request(frame)
    except ProtocolError:
        return True
    return op not in WRITE_OPS and op != "batch"  # a batch may hold writes


def _frames(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    frames: list[bytes] = []
    while len(frames) < count:
        if rng.random() < 0.3:
            frame = rng.randbytes(rng.randint(0, 64))
        else:
            frame = _mutate(rng, rng.choice(VALID))
        if _harmless(frame):
            frames.append(frame)
    return frames


@pytest.mark.slow
def test_100000_random_and_mutated_frames_against_a_live_server(server):
    with Client(server.node, timeout_s=5) as table:
        table.mset({f"key:{i}": f"value:{i}" for i in range(500)})
        table.set("counter", "41")
        before = {key: table.get(key) for key in table.keys()}
    frames = _frames(100_000, seed=20261125)
    peer = RawPeer(server.node)
    window, sent, received = 500, 0, 0
    started = time.monotonic()
    while received < len(frames):
        while sent < len(frames) and sent - received < window:
            peer.send(frames[sent])
            sent += 1
        _assert_valid_reply(peer.recv(timeout_s=10))
        received += 1
    elapsed = time.monotonic() - started
    peer.close()
    assert server.proc.poll() is None, "the server died"
    with Client(server.node, timeout_s=5) as table:
        assert table.ping()
        after = {key: table.get(key) for key in table.keys()}
    assert after == before
    assert elapsed < 60
