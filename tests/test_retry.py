"""Timeouts, retries and late replies, against real sockets; Client and AsyncClient alike (``make_client``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from client import Client, NodeUnavailableError
from common.protocol import decode_reply
from tests.servers import ServerProcess


def test_stopped_server_fails_within_timeout_then_the_same_client_recovers(
        start_server: Callable[..., ServerProcess], make_client: Callable[..., Any],
) -> None:
    server = start_server()
    port = server.port
    table = make_client(server.node, timeout_s=0.3, retries=2)
    table.set("k", "v")
    server.stop()
    started = time.monotonic()
    with pytest.raises(NodeUnavailableError) as failure:
        table.get("k")
    waited = time.monotonic() - started
    assert 0.85 < waited < 0.3 * 3 + 1.0
    assert failure.value.node == server.node and failure.value.waited_s >= 0.9 - 0.05
    start_server("--port", str(port))
    assert table.set("k", "again") is True
    assert table.get("k") == "again"
    table.close()


class SlowServer:
    """A ROUTER that answers its first request only after ``delay_s``, the rest at once."""

    def __init__(self, delay_s: float) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.delay_s = delay_s
        self.requests: list[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop = threading.Event()
        self._thread.start()

    def _run(self) -> None:
        import msgpack

        pending = []
        while not self._stop.is_set():
            if self.socket.poll(20):
                frames = self.socket.recv_multipart()
                self.requests.append(frames[-1])
                _op, key = msgpack.unpackb(frames[-1])[:2]
                reply = [*frames[:-1], msgpack.packb([0, f"answer to {key}"])]
                if len(self.requests) == 1:
                    pending.append((time.monotonic() + self.delay_s, reply))
                else:
                    self.socket.send_multipart(reply)
            for due, reply in list(pending):
                if time.monotonic() >= due:
                    self.socket.send_multipart(reply)
                    pending.remove((due, reply))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close(linger=0)
        self.context.term()


def test_a_late_reply_is_never_returned_for_the_next_request(make_client: Callable[..., Any]) -> None:
    slow = SlowServer(delay_s=0.5)
    try:
        table = make_client(f"127.0.0.1:{slow.port}", timeout_s=0.2, retries=0)
        with pytest.raises(NodeUnavailableError):
            table.get("first")
        time.sleep(0.5)  # the late answer to "first" arrives now
        assert table.get("second") == "answer to second"
        assert table.get("third") == "answer to third"
        table.close()
    finally:
        slow.close()


class DropFirstReplyProxy:
    """Forwards requests to a real server but swallows the first reply, like a lost packet."""

    def __init__(self, upstream: str) -> None:
        self.context = zmq.Context()
        self.front = self.context.socket(zmq.ROUTER)
        self.port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.back = self.context.socket(zmq.DEALER)
        self.back.connect(upstream)
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(20):
                if sock is self.front:
                    self.back.send_multipart(self.front.recv_multipart())
                else:
                    frames = self.back.recv_multipart()
                    if self.dropped == 0:
                        self.dropped += 1
                        continue
                    self.front.send_multipart(frames)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.front.close(linger=0)
        self.back.close(linger=0)
        self.context.term()


@pytest.mark.parametrize("op", ["incr", "cas"])
def test_a_retried_write_whose_reply_was_lost_is_applied_once(
        server: ServerProcess, op: str, make_client: Callable[..., Any],
) -> None:
    proxy = DropFirstReplyProxy(f"tcp://{server.node}")
    try:
        with Client(server.node) as direct:
            direct.set("n", "10")
        with make_client(f"127.0.0.1:{proxy.port}", timeout_s=0.5, retries=2) as table:
            if op == "incr":
                assert table.incr("n", 5) == 15
            else:
                assert table.cas("n", "10", "11") is True
        assert proxy.dropped == 1
        with Client(server.node) as direct:
            assert direct.get("n") == ("15" if op == "incr" else "11")
    finally:
        proxy.close()


def test_raw_req_socket_gets_one_reply_per_request(server: ServerProcess) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, 2000)
    sock.connect(f"tcp://{server.node}")
    try:
        for _i in range(3):
            sock.send(b"\x91\xa4ping")
            assert decode_reply(sock.recv()) == (0, "PONG")
    finally:
        sock.close(linger=0)
        context.term()
