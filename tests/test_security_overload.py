"""Overload: far more clients than the server can serve, and a peer that never reads.

The server's memory must stay bounded (per-peer queues are capped by the
high-water marks and the output budgets; a peer whose queue fills up is
disconnected), and every client must get either an answer or a clean
:class:`NodeUnavailableError` within its timeout.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import zmq

from client import Client, NodeUnavailableError
from common.protocol import encode_request
from tests.hostile import RawPeer, read_status_kib

MB = 1024 * 1024
CLIENTS = 200
TIMEOUT_S = 0.25
ROUNDS = 5
KEYS = 100  # 1 KB values: a 100 KB request


@pytest.mark.slow
def test_200_clients_each_get_an_answer_or_a_clean_timeout_and_memory_stays_bounded(server):
    value = "x" * 1000
    pid = server.proc.pid
    before_kib = read_status_kib(pid, "VmHWM")
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client(number: int) -> None:
        table = Client(server.node, timeout_s=TIMEOUT_S, retries=0)
        start.wait()
        try:
            rounds(table)
        finally:
            table.close()

    def rounds(table: Client) -> None:
        for _ in range(ROUNDS):
            began = time.monotonic()
            try:
                table.mset({f"shared:{i}": value for i in range(KEYS)})
                table.get("shared:0")
                outcome = "answered"
            except NodeUnavailableError:
                # 200 threads share this test's GIL: allow for scheduling, not for a hang.
                outcome = "timed out" if time.monotonic() - began < TIMEOUT_S + 10 else "hung"
            except Exception as exc:  # anything else is a failure of the test
                outcome = f"error {type(exc).__name__}: {exc}"
            with lock:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    assert set(outcomes) <= {"answered", "timed out"}, outcomes
    assert sum(outcomes.values()) == CLIENTS * ROUNDS
    assert outcomes["answered"] > 0
    growth = (read_status_kib(pid, "VmHWM") - before_kib) * 1024
    # 200 requests of ~300 KB in flight at most is 60 MB; the table holds 300 KB.
    print(f"overload: {dict(outcomes)}, peak RSS growth {growth / MB:.1f} MB")
    assert growth < 120 * MB, f"peak RSS grew {growth / MB:.0f} MB ({outcomes})"
    with Client(server.node, timeout_s=5) as table:
        assert table.ping() and table.stats()["keys"] == KEYS


def test_a_peer_that_never_reads_its_replies_cannot_grow_the_server(server):
    with Client(server.node, timeout_s=5) as table:
        table.set("big", "y" * 10_000)
    pid = server.proc.pid
    before_kib = read_status_kib(pid, "VmHWM")
    flood = RawPeer(server.node, rcvhwm=10)
    request = encode_request("get", "big")
    sent, stuck_since = 0, None
    while sent < 30_000:  # 300 MB of replies if the server queued them all
        try:
            flood.socket.send_multipart([b"", request], zmq.NOBLOCK)
            sent, stuck_since = sent + 1, None
        except zmq.Again:  # its own queue is full: wait for it to drain, unless it no longer does
            stuck_since = stuck_since or time.monotonic()
            if time.monotonic() - stuck_since > 2:
                break
            time.sleep(0.01)
    with Client(server.node, timeout_s=5) as table:
        for _ in range(20):
            assert table.ping()
            time.sleep(0.05)
        output = table.stats()["output"]
    growth = (read_status_kib(pid, "VmHWM") - before_kib) * 1024
    print(f"flood: {sent} requests sent, peak RSS growth {growth / MB:.1f} MB, {output}")
    flood.close()
    assert growth < 50 * MB, f"peak RSS grew {growth / MB:.0f} MB"
    assert output["disconnected_peers"] == 1 and output["queued_bytes"] == 0
    with Client(server.node, timeout_s=5) as table:
        assert table.get("big") == "y" * 10_000
