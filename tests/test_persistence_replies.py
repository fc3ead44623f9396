"""A write retried after the server crashed and restarted gets its original reply, not a second application.

The server remembers the replies of the last 10,000 writes by request id, so a
client's retry of a write that did arrive is answered instead of applied
twice. With a data dir those replies are journaled with the write, so they
survive a SIGKILL and a restart, and a compaction (the snapshot carries them).
Each test plays the client whose reply was lost: it sends a write with a
request id on a raw socket, takes the reply off the wire (the application
never sees it), kills the server, restarts it on the same data dir and sends
the very same frame again.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from client import Client
from common.protocol import encode_batch, encode_request
from server.records import frame
from server.replies import RECENT_REPLIES
from tests.servers import ServerProcess
from tests.test_retry import DropFirstReplyProxy

#: The write each test loses the reply of, the frame that sends it, and the counter it leaves.
WRITES = {
    "incr": (encode_request("incr", "n", 5, options={"rid": "c0ffee:7"}), "15"),
    "cas": (encode_request("cas", "n", "10", "11", options={"rid": "c0ffee:7"}), "11"),
}


def _start(data_dir: Path, *args: str, port: int = 0) -> ServerProcess:
    return ServerProcess(["--data-dir", str(data_dir), "--port", str(port), *args])


def _crash(server: ServerProcess) -> None:
    server.signal(signal.SIGKILL)
    server.proc.wait(10)


def _send(node: str, frame: bytes) -> bytes:
    """Send one frame on a fresh DEALER socket; the reply as it came off the wire."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    try:
        sock.connect(f"tcp://{node}")
        sock.send_multipart([b"", frame])
        return sock.recv_multipart()[-1]
    finally:
        sock.close()
        context.term()


def _value(node: str, key: str) -> str | None:
    with Client(node, timeout_s=5.0) as client:
        return client.get(key)


@pytest.mark.durability
@pytest.mark.parametrize("policy", ["always", "everysec"])
@pytest.mark.parametrize("op", sorted(WRITES))
def test_a_write_retried_after_a_crash_gets_its_original_reply(tmp_path, policy, op):
    frame, after = WRITES[op]
    data_dir = tmp_path / "data"
    server = _start(data_dir, "--fsync", policy)
    try:
        with Client(server.node, timeout_s=5.0) as client:
            client.set("n", "10")
        lost = _send(server.node, frame)
        assert msgpack.unpackb(lost)[0] == 0
        _crash(server)
        server = _start(data_dir, "--fsync", policy)
        assert _send(server.node, frame) == lost, "the retry was applied again instead of answered"
        assert _value(server.node, "n") == after
    finally:
        server.kill()


@pytest.mark.durability
@pytest.mark.parametrize("op", sorted(WRITES))
def test_the_remembered_reply_survives_a_compaction_between_the_write_and_the_crash(tmp_path, op):
    frame, after = WRITES[op]
    data_dir = tmp_path / "data"
    args = ("--fsync", "always", "--compact-after-bytes", "4096")
    server = _start(data_dir, *args)
    try:
        with Client(server.node, timeout_s=5.0) as client:
            client.set("n", "10")
            lost = _send(server.node, frame)
            deadline = time.monotonic() + 20
            i = 0
            while True:  # write until a compaction has replaced the journal that holds the write
                client.set(f"filler:{i % 20}", "x" * 200)
                i += 1
                stats = client.stats()["persistence"]
                if stats["compactions"] >= 1 and not stats["compacting"]:
                    break
                assert time.monotonic() < deadline, stats
        assert not (data_dir / "journal.00000001").exists(), "the write's journal is still there"
        _crash(server)
        server = _start(data_dir, *args)
        assert _send(server.node, frame) == lost, "the retry was applied again instead of answered"
        assert _value(server.node, "n") == after
    finally:
        server.kill()


@pytest.mark.durability
def test_a_client_retrying_across_a_crash_and_restart_applies_its_incr_once(tmp_path):
    """The real Client: its first reply is lost on the way, the server is SIGKILLed and
    restarted on the same port, and the client's own retry gets the first reply."""
    data_dir = tmp_path / "data"
    server = _start(data_dir, "--fsync", "always")
    port = server.port
    with Client(server.node, timeout_s=5.0) as direct:
        direct.set("n", "10")
    proxy = DropFirstReplyProxy(f"tcp://{server.node}")
    result: list[object] = []
    try:
        with Client(f"127.0.0.1:{proxy.port}", timeout_s=0.5, retries=40) as table:
            caller = threading.Thread(target=lambda: result.append(table.incr("n", 5)))
            caller.start()
            deadline = time.monotonic() + 10
            while proxy.dropped == 0:
                assert time.monotonic() < deadline, "the first reply never came"
                time.sleep(0.005)
            _crash(server)
            server = _start(data_dir, "--fsync", "always", port=port)
            caller.join(30)
        assert result == [15]
        assert _value(server.node, "n") == "15"
    finally:
        proxy.close()
        server.kill()


@pytest.mark.durability
def test_a_restart_remembers_the_newest_replies_and_no_more(tmp_path):
    data_dir = tmp_path / "data"
    server = _start(data_dir, "--fsync", "no")
    frames = [encode_request("incr", "n", 1, options={"rid": f"r:{i}"}) for i in range(RECENT_REPLIES + 1)]
    try:
        half = len(frames) // 2
        for part in (frames[:half], frames[half:]):
            reply = msgpack.unpackb(_send(server.node, encode_batch(part)))
            assert reply[0] == 0 and all(status == 0 for status, _ in reply[1])
        _crash(server)
        server = _start(data_dir, "--fsync", "no")
        newest = msgpack.unpackb(_send(server.node, encode_batch(frames[1:])))
        assert newest == [0, [[0, i] for i in range(2, len(frames) + 1)]], "a remembered write ran again"
        assert _value(server.node, "n") == str(len(frames))
        assert msgpack.unpackb(_send(server.node, frames[0])) == [0, len(frames) + 1], "the oldest is forgotten"
    finally:
        server.kill()


@pytest.mark.durability
def test_a_data_dir_of_the_first_format_loads_and_from_then_on_keeps_request_ids(tmp_path):
    """memlookup 0.1.0 wrote ``MLSNAP1``/``MLJRNL1`` files: records of bare changes, no request ids."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    snapshot = b"MLSNAP1\n" + frame(msgpack.packb([["a", "1", None], ["b", "2", None], ["n", "10", None]])) + frame(b"")
    journal = b"MLJRNL1\n" + frame(msgpack.packb([["b", None, None], ["c", "3", time.time() + 1000]]))
    (data_dir / "snapshot.00000002").write_bytes(snapshot)
    (data_dir / "journal.00000002").write_bytes(journal)
    frame_, after = WRITES["incr"]
    server = _start(data_dir, "--fsync", "always")
    try:
        with Client(server.node, timeout_s=5.0) as client:
            found = dict(zip("abcn", client.mget(list("abcn")), strict=True))
            assert found == {"a": "1", "b": None, "c": "3", "n": "10"}
            assert 990 < client.ttl("c") <= 1000
        lost = _send(server.node, frame_)
        _crash(server)
        server = _start(data_dir, "--fsync", "always")
        assert _send(server.node, frame_) == lost, "the retry was applied again instead of answered"
        with Client(server.node, timeout_s=5.0) as client:
            assert client.mget(list("abcn")) == ["1", None, "3", after]
    finally:
        server.kill()
    assert (data_dir / "journal.00000002").read_bytes() == journal, "the old journal was appended to"
