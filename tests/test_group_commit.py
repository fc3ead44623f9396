"""Group commit under ``--fsync always``: every request in a shared batch is answered as itself.

Several DEALER peers keep many writes and reads in flight at once, so the
server's batches often wait (linger) for more writers; a request taken after
such a wait must get its own reply, once.
"""

from __future__ import annotations

import threading

import msgpack
import zmq

from common.protocol import encode_request
from tests.hostile import RawPeer

PEERS = 6
PAIRS = 150  # per peer: a set and a get of its own key each


def _run_peer(node: str, index: int, context: zmq.Context[zmq.Socket[bytes]], problems: list[str]) -> None:
    peer = RawPeer(node, context)
    try:
        expected = []
        for n in range(PAIRS):
            key, value = f"p{index}:k{n}", f"v{index}:{n}"
            peer.send(encode_request("set", key, value, options={"rid": f"peer{index}:{n}"}))
            peer.send(encode_request("get", key))
            expected += [[0, True], [0, value]]
        for position, want in enumerate(expected):
            got = msgpack.unpackb(peer.recv(10.0), raw=False)
            if got != want:
                problems.append(f"peer {index} reply {position}: {got!r} instead of {want!r}")
                return
        try:
            extra = peer.recv(0.3)
        except TimeoutError:
            return
        problems.append(f"peer {index}: an extra reply {msgpack.unpackb(extra, raw=False)!r}")
    finally:
        peer.close()


def test_concurrent_writers_under_fsync_always_get_their_own_replies(start_server, tmp_path):
    server = start_server("--data-dir", str(tmp_path), "--fsync", "always")
    context = zmq.Context()
    problems: list[str] = []
    threads = [threading.Thread(target=_run_peer, args=(server.node, i, context, problems)) for i in range(PEERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        context.term()
    assert problems == []
