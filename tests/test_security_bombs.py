"""msgpack bombs: frames that would decode to far more than their size.

Each bomb is a few bytes to a few KB that would, decoded naively, make the
server reserve megabytes or gigabytes. The server must answer each with an
error in well under 100 ms, and its peak resident memory (VmHWM, which also
catches short-lived allocations) must grow by less than 10 MB over all of them.
Dense frames, which hold every element they claim but each in a byte or
two, may cost the decoder at most 4 times their size plus 8 MiB (besides
the characters of their strings, which these frames hardly have).
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc

import msgpack
import pytest

from client import Client
from common.protocol import ONE_SHOT_FRAME_BYTES, ProtocolError, Status, decode_reply, unpack_request
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


def _long_array(elements: bytes, count: int) -> bytes:
    return b"\xdc" + count.to_bytes(2, "big") + elements * count


def _dense(unit: bytes, size_bytes: int) -> bytes:
    """``["mget", [[unit x 10,000] x N]]`` of about ``size_bytes``."""
    inner = _long_array(unit, 10_000)
    count = size_bytes // len(inner)
    return b"\x92\xa4mget\xdc" + count.to_bytes(2, "big") + inner * count


def _tree(leaf: bytes, depth: int, copies: int = 1) -> bytes:
    """``copies`` trees of 15-element arrays, ``depth`` deep, over ``leaf``: no long array anywhere."""
    node = leaf
    for _ in range(depth):
        node = b"\x9f" + node * 15
    return b"\x92\xa4mget" + bytes([0x90 + copies]) + node * copies


DENSE_FRAMES = {  # each decodes, naively, to many times its size
    "empty arrays": _dense(b"\x90", 4 * MB),
    "empty maps": _dense(b"\x80", 4 * MB),
    "maps of one empty array": _dense(b"\x81\xa0\x90", 4 * MB),
    "negative fixints": _dense(b"\xe0", 4 * MB),
    "two-character strings": _dense(b"\xa2ab", 4 * MB),
    "a tree of small arrays": _tree(b"\x90", 6),
    "a tree of small arrays of ints": _tree(b"\xe0", 6),
    "small frame of empty arrays": _tree(b"\x90", 3, copies=4),
}


@pytest.mark.parametrize("name", list(DENSE_FRAMES))
def test_decoding_a_frame_costs_at_most_four_times_its_size_plus_8_mib(name):
    frame = DENSE_FRAMES[name]
    tracemalloc.start()
    try:
        with contextlib.suppress(ProtocolError):  # large ones are refused; the handler refuses the rest
            unpack_request(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    bound = 4 * len(frame) + 8 * MB if len(frame) > ONE_SHOT_FRAME_BYTES else 1.5 * MB
    assert peak <= bound, f"{name}: {len(frame)} bytes made {peak / MB:.1f} MB"


def _nest(levels: int) -> list[object]:
    """``levels`` (1 or more) arrays, one inside the other, around a string."""
    value: list[object] = ["k"]
    for _ in range(levels - 1):
        value = [value]
    return value


def test_a_large_frame_with_a_long_array_may_nest_8_deep_not_9():
    long_array = ["x" * 1000] * 17  # over the one-shot size, and longer than 16
    eight = ["mget", long_array, _nest(7)]  # 8 levels, counting the request itself
    assert unpack_request(msgpack.packb(eight)) == eight
    with pytest.raises(ProtocolError, match=r"nested too deeply \(over 8 levels\)"):
        unpack_request(msgpack.packb(["mget", long_array, _nest(8)]))
    short_arrays = ["mget", ["x" * 1000] * 16, _nest(100)]  # no long array: msgpack's own 1024 holds
    assert unpack_request(msgpack.packb(short_arrays)) == short_arrays


@pytest.mark.parametrize("request_", [
    ["mget", [f"key:{i:012d}" for i in range(10_000)]],
    ["mset", {f"key:{i:012d}": "v" * 100 for i in range(2_000)}, {"rid": "9f3a5c0e1b2d4f68:1"}],
    ["batch", [["set", f"k{i}", "v" * 100, {"rid": f"r:{i}"}] for i in range(300)] + [["mget", ["a"] * 100]]],
    ["set", "k", "€" * 100_000],
])
def test_large_valid_frames_decode_as_msgpack_does(request_):
    frame = msgpack.packb(request_)
    assert len(frame) > ONE_SHOT_FRAME_BYTES
    assert unpack_request(frame) == request_
