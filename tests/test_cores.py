"""The compiled core and the pure-Python core answer alike: the same requests, byte for byte, the same table.

server/core.py picks the core at import: the compiled loop (server/_cloop.pyx,
built by ``pip install``, ``pip install -e .`` or ``python setup.py build_ext
--inplace``; .ci/run builds it) unless ``MEMLOOKUP_PURE_PYTHON=1`` or the
extension cannot be imported. The differential tests start one server on each
core and send both the same random requests: valid ones (the fast paths' get,
set, mget, mset with and without request ids, and every other op the replies of
which do not depend on the moment or the process), invalid ones (wrong arity
and types, fields over the limits, strings that are not UTF-8, odd but valid
msgpack encodings), mutated and random frames as tests/test_security_fuzz.py
makes them, in every envelope a ROUTER sees. Every reply must be the same
bytes, and at the end so must the tables and the op and error counts.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from client import Client
from common.protocol import encode_request
from tests.servers import ROOT, ServerProcess
from tests.test_security_fuzz import _mutate

#: Both servers hash strings alike, so an error naming one of several unknown options names the same one.
SAME_HASHES = {"PYTHONHASHSEED": "0"}
COMPILED = {**SAME_HASHES, "MEMLOOKUP_PURE_PYTHON": "0"}
PURE = {**SAME_HASHES, "MEMLOOKUP_PURE_PYTHON": "1"}

KEYS = ["k", "key:1", "", "é", "ключ", "k" * 16, "k" * 17, "🙂" * 4, "n"]
VALUES = ["v", "", "12", "-7", "9223372036854775807", "é" * 12, "x" * 48, "x" * 49, "L" * 10_000, "é" * 6_000]
#: Ops whose replies depend on the moment or the process (uptime, cursors, seconds left): never sent.
UNCOMPARABLE = {"stats", "keys", "ttl"}


def _options(rng: random.Random, names: tuple[str, ...]) -> dict[str, Any] | None:
    chosen: dict[str, Any] = {}
    for name in names:
        if rng.random() < 0.3:
            chosen[name] = {"rid": f"r{rng.randrange(6)}", "ttl_s": rng.choice([1000, 1000.5, 0, -1, "x"]),
                            "nx": rng.random() < 0.5, "xx": rng.random() < 0.5, "v": rng.choice([1, 1, 2])}[name]
    if rng.random() < 0.05:
        chosen[rng.choice(["bogus", "other", "rid2"])] = 1
    return chosen or None


def _valid(rng: random.Random, in_batch: bool = False) -> bytes:
    key, value = rng.choice(KEYS), rng.choice(VALUES)
    keys = rng.sample(KEYS, rng.randint(0, len(KEYS)))
    op = rng.choice(["get", "get", "set", "set", "mget", "mset", "del", "exists", "incr", "cas", "ping"]
                    + ([] if in_batch else ["batch"]))
    if op == "get":
        return encode_request("get", key, options=_options(rng, ("v",)))
    if op == "set":
        return encode_request("set", key, value, options=_options(rng, ("rid", "ttl_s", "nx", "xx", "v")))
    if op == "mget":
        return encode_request("mget", keys, options=_options(rng, ("v",)))
    if op == "mset":
        pairs = {k: rng.choice(VALUES) for k in keys}
        return encode_request("mset", pairs, options=_options(rng, ("rid", "ttl_s")))
    if op == "del":
        return encode_request("del", key, options=_options(rng, ("rid",)))
    if op == "exists":
        return encode_request("exists", key)
    if op == "incr":
        return encode_request("incr", key, rng.choice([1, -3, 2**62]), options=_options(rng, ("rid",)))
    if op == "cas":
        return encode_request("cas", key, rng.choice(VALUES), value, options=_options(rng, ("rid", "ttl_s")))
    if op == "ping":
        return encode_request("ping")
    if rng.random() < 0.5:  # every element of a shape the compiled core runs itself
        elements = [_plain(rng) for _ in range(rng.randint(1, 24))]
    else:
        elements = [msgpack.unpackb(_valid(rng, in_batch=True)) for _ in range(rng.randint(0, 8))]
    return msgpack.packb(["batch", elements])


def _plain(rng: random.Random) -> list[Any]:
    """A get, set, mget or mset as the client library sends it (a write with a request id or none)."""
    key, value, rid = rng.choice(KEYS), rng.choice(VALUES), [{"rid": f"r{rng.randrange(6)}"}]
    keys = rng.sample(KEYS, rng.randint(0, len(KEYS)))
    return rng.choice([["get", key], ["set", key, value, *rid[:rng.randrange(2)]], ["mget", keys],
                       ["mset", {k: rng.choice(VALUES) for k in keys}, *rid[:rng.randrange(2)]]])


#: Over 16 KiB, more msgpack values than the decoder allows in a frame of its size (common/protocol.py).
TOO_MANY_VALUES = msgpack.packb(["batch", [["mget", [""] * 16]] * 10_000])


def _invalid(rng: random.Random) -> bytes:
    key = rng.choice(KEYS)
    return rng.choice([
        msgpack.packb(["get"]), msgpack.packb(["get", key, key]), msgpack.packb(["get", 7]),
        msgpack.packb(["set", key]), msgpack.packb(["set", key, 5]), msgpack.packb(["set", 5, "v"]),
        msgpack.packb(["mget", key]), msgpack.packb(["mget", [key, 3]]), msgpack.packb(["mset", [key, "v"]]),
        msgpack.packb(["mset", {key: 1}]), msgpack.packb(["set", key, "v", {"rid": 5}]),
        msgpack.packb(["set", key, "v", {"rid": "r" * 129}]), msgpack.packb(["set", key, "v", {}]),
        msgpack.packb(["set", key, "v", {"rid": None}]), msgpack.packb(["mget", [key] * 7]),
        msgpack.packb(["mset", {f"k{i}": "v" for i in range(7)}]), msgpack.packb(["get", "k" * 2000]),
        msgpack.packb(["set", key, "v" * 2_000_000]), msgpack.packb(["set", key, b"bytes"], use_bin_type=True),
        msgpack.packb(["nope", key]), msgpack.packb([]), msgpack.packb({"get": key}), msgpack.packb("get"),
        msgpack.packb(["batch", [["batch", []]]]),
        b"\x92\xa3get\xa2\xff\xfe",  # a key that is not UTF-8
        b"\x93\xa3set\xa1k\xa3\xed\xa0\x80",  # a value that is a UTF-8-encoded surrogate
        b"\x92\xa3get\xda\x00\x01k",  # valid: a str16 header for a one-byte key
        b"\x92\xd9\x03get\xa1k",  # valid: a str8 header for the op
        b"\x93\xa3set\xa1k\xa1v\xc0",  # a nil where the options map may go
        b"\x92\xa3get\xa1k\x00",  # trailing bytes
        b"\x92\xa4mget\xdc\x00\x02\xa1a\xa1b",  # valid: an array16 of two keys
        b"\x92\xa4mget\xdc\x00\x03\xa1a\xa1b",  # an array claiming more keys than it has
        b"\x92\xa4mset\xde\x00\x01\xa1a\xa1b",  # valid: a map16 of one pair
        b"\x92\xa4mset\x82\xa1a\xa11\xa1a\xa12",  # valid: one key twice (the last value wins)
        TOO_MANY_VALUES,
    ])


def _request(rng: random.Random) -> bytes:
    """One random request frame whose reply does not depend on the moment or the process."""
    while True:
        roll = rng.random()
        if roll < 0.55:
            frame = _valid(rng)
        elif roll < 0.75:
            frame = _invalid(rng)
        elif roll < 0.95:
            frame = _mutate(rng, _valid(rng))
        else:
            frame = rng.randbytes(rng.randint(0, 40))
        if not _mentions(frame, UNCOMPARABLE):
            return frame


def _mentions(frame: bytes, names: set[str]) -> bool:
    try:
        decoded = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:
        return False  # refused alike by both
    stack = [decoded]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and item in names:
            return True
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def _message(rng: random.Random, frame: bytes) -> list[bytes]:
    """The frames a DEALER sends: mostly REQ's envelope, sometimes every other envelope a ROUTER may see."""
    roll = rng.random()
    if roll < 0.85:
        return [b"", frame]
    return rng.choice([[frame], [b"hop", b"", frame], [b"", frame, frame], [b"", b"", frame], [b""]])


class _Peer:
    """A DEALER to one server, lockstep: one message, then its reply (all its frames)."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], node: str) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(f"tcp://{node}")

    def ask(self, message: list[bytes]) -> list[bytes]:
        self.socket.send_multipart(message)
        if not self.socket.poll(10_000):
            raise TimeoutError(f"no reply to {message!r}")
        return self.socket.recv_multipart()


def _table(server: ServerProcess, peer: _Peer) -> tuple[dict[str, bytes], dict[str, Any], dict[str, Any]]:
    """The server's keys and the reply to a get of each (a value may be over a reply limit), and its op and
    error counts (but of ``keys``: a scan takes as many pages as its time slices allow)."""
    with Client(server.node, timeout_s=10) as table:
        keys = sorted(table.keys())
        stats = table.stats()
    stats["ops"].pop("keys")
    replies = {key: peer.ask([b"", encode_request("get", key)])[-1] for key in keys}
    return replies, stats["ops"], stats["errors"]


@pytest.fixture
def both_cores(start_server: Callable[..., ServerProcess]) -> Iterator[Callable[..., tuple[ServerProcess, ...]]]:
    """Starts a server on each core with the same arguments: (compiled, pure Python)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()

    def start(*args: str, data_dirs: tuple[Path, Path] | None = None) -> tuple[ServerProcess, ...]:
        servers = []
        for index, env in enumerate((COMPILED, PURE)):
            extra = ("--data-dir", str(data_dirs[index])) if data_dirs else ()
            servers.append(start_server(*args, *extra, env=env))
        assert "compiled core" in servers[0].log, (
            "the compiled core did not run (build it: python setup.py build_ext --inplace):\n" + servers[0].log)
        assert "pure-Python core" in servers[1].log
        return tuple(servers)

    yield start
    context.term()


def _compare(servers: tuple[ServerProcess, ...], seed: int, count: int) -> None:
    rng = random.Random(seed)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    peers = [_Peer(context, server.node) for server in servers]
    try:
        for number in range(count):
            message = _message(rng, _request(rng))
            compiled, pure = (peer.ask(message) for peer in peers)
            assert compiled == pure, f"request {number}: {message!r}"
        assert _table(servers[0], peers[0]) == _table(servers[1], peers[1])
    finally:
        for peer in peers:
            peer.socket.close()
        context.term()
    assert all(server.proc.poll() is None for server in servers)


SCENARIOS = {
    "defaults": (),
    "small limits": ("--max-key-bytes", "16", "--max-value-bytes", "48", "--max-batch-keys", "6"),
    "reply limit": ("--max-reply-bytes", "24576"),
    # The cap's own reply limit depends on the process's memory at start-up,
    # which differs between the cores: a lower --max-reply-bytes fixes it.
    "memory cap": ("--max-memory", "256mb", "--eviction", "allkeys-lru", "--max-reply-bytes", "1048576"),
}


@pytest.mark.parametrize("args", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_both_cores_give_the_same_replies_and_table(both_cores, args):
    _compare(both_cores(*args), seed=20261201, count=3000)


def test_both_cores_give_the_same_replies_and_table_with_a_data_dir(both_cores, tmp_path):
    servers = both_cores("--fsync", "no", data_dirs=(tmp_path / "compiled", tmp_path / "pure"))
    _compare(servers, seed=11, count=2000)


def test_the_start_up_line_names_the_core(start_server):
    assert "compiled core" in start_server(env={"MEMLOOKUP_PURE_PYTHON": "0"}).log
    forced = start_server(env={"MEMLOOKUP_PURE_PYTHON": "1"})
    assert "pure-Python core (MEMLOOKUP_PURE_PYTHON=1)" in forced.log


def test_a_server_whose_compiled_core_cannot_be_imported_runs_the_python_core(start_server):
    # None in sys.modules makes the import fail, as a missing or broken extension does.
    program = [sys.executable, "-c", "import sys; sys.modules['server._cloop'] = None; "
               "from server.__main__ import main; sys.exit(main())"]
    server = start_server(env={"MEMLOOKUP_PURE_PYTHON": "0"}, program=program)
    assert "pure-Python core (no compiled core:" in server.log
    with Client(server.node, timeout_s=5) as table:
        table.set("k", "v")
        assert table.get("k") == "v"


def test_a_checkout_whose_compiled_core_is_older_than_its_sources_runs_the_python_core(start_server, tmp_path):
    # A `git pull` without a rebuild: the compiled core may no longer fit the Python it
    # calls, so the server runs the Python core and says how to rebuild.
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "server", copy / "server", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "common", copy / "common", ignore=shutil.ignore_patterns("__pycache__"))
    [built] = (copy / "server").glob("_cloop*.so")
    os.utime(built, (1_000_000_000, 1_000_000_000))
    program = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(copy)!r}); "
               "from server.__main__ import main; sys.exit(main())"]
    server = start_server(env={"MEMLOOKUP_PURE_PYTHON": "0"}, program=program)
    assert "pure-Python core (the compiled core is older than server/_cloop.pyx: rebuild it" in server.log
    with Client(server.node, timeout_s=5) as table:
        table.set("k", "v")
        assert table.get("k") == "v"
    os.utime(built)  # built after its sources again: the compiled core runs
    rebuilt = start_server(env={"MEMLOOKUP_PURE_PYTHON": "0"}, program=program).log
    assert "compiled core" in rebuilt and "pure-Python core" not in rebuilt
