"""``keys`` with costly patterns over 10,000 keys of 1 KB, against real servers.

A scan must not hold up other clients (pages stop after a time slice and
return a cursor), a stop signal must still be obeyed within a second, and
every key present for the whole scan must still come back exactly once.
"""

from __future__ import annotations

import fnmatch
import signal
import threading
import time

import pytest

from client import Client
from common.errors import InvalidRequestError
from common.protocol import Status, decode_reply, encode_batch, encode_request
from tests.hostile import RawPeer

KEYS = 10_000
#: The issue's pattern: fnmatch's regex backtracks over every 1 KB key that does not match.
BACKTRACKING = "*" + "a" * 1000 + "b"
#: 31 sets and a character between stars: searched at every position, the costliest pattern allowed.
SEARCHED = "*" + "[a-z]" * 31 + "b*"


def _names() -> list[str]:
    """1 KB keys: half end in ``b`` (they match both patterns), half in ``c``."""
    return [f"{i:06d}" + "a" * 1017 + "bc"[i % 2] for i in range(KEYS)]


@pytest.fixture
def filled(start_server):
    server = start_server()
    names = _names()
    with Client(server.node, timeout_s=30) as table:
        for first in range(0, KEYS, 500):
            table.mset({name: "v" for name in names[first:first + 500]})
    return server, names


def _ping_while(node: str, scan_done: threading.Event) -> tuple[float, bool]:
    """Ping once; returns (seconds it waited, whether the scan was still running when it was answered)."""
    with Client(node, timeout_s=60, retries=0) as table:
        began = time.perf_counter()
        table.ping()
        return time.perf_counter() - began, not scan_done.is_set()


def test_a_ping_is_answered_while_one_scan_page_of_10000_keys_runs_and_each_key_comes_once(filled):
    server, names = filled
    done = threading.Event()
    found: list[str] = []

    def scan() -> None:
        with Client(server.node, timeout_s=60, retries=0) as table:
            found.extend(table.keys(SEARCHED, count=KEYS))  # one page, if pages stopped only on count
        done.set()

    scanner = threading.Thread(target=scan)
    scanner.start()
    time.sleep(0.2)
    assert not done.is_set(), "the scan ended too soon to test anything"
    waited_s, during = _ping_while(server.node, done)
    scanner.join(60)
    assert during, "the ping was answered only after the scan"
    assert waited_s < 1.0, f"ping waited {waited_s:.2f} s"
    assert sorted(found) == sorted(n for n in names if fnmatch.fnmatchcase(n, SEARCHED))
    assert len(found) == KEYS // 2
    with Client(server.node, timeout_s=60, retries=0) as table:
        found = list(table.keys(BACKTRACKING, count=KEYS))
    assert sorted(found) == sorted(n for n in names if n.endswith("b"))


def test_a_batch_of_five_scans_does_not_hold_up_a_ping(filled):
    server, names = filled
    done = threading.Event()
    pages: list[list[str]] = [[] for _ in range(5)]

    def scan() -> None:
        peer = RawPeer(server.node)
        cursors, finished = [0] * 5, [False] * 5
        try:
            while not all(finished):
                live = [i for i in range(5) if not finished[i]]
                peer.send(encode_batch([encode_request("keys", SEARCHED, cursors[i], KEYS) for i in live]))
                status, replies = decode_reply(peer.recv(60))
                assert status == Status.OK
                for i, (item_status, (cursor, keys)) in zip(live, replies, strict=True):
                    assert item_status == Status.OK
                    cursors[i], finished[i] = cursor, cursor == 0
                    pages[i] += keys
        finally:
            peer.close()
            done.set()

    scanner = threading.Thread(target=scan)
    scanner.start()
    time.sleep(0.2)
    assert not done.is_set(), "the scans ended too soon to test anything"
    waited_s, during = _ping_while(server.node, done)
    scanner.join(120)
    assert during, "the ping was answered only after the batch of scans"
    assert waited_s < 1.0, f"ping waited {waited_s:.2f} s"
    expected = sorted(n for n in names if fnmatch.fnmatchcase(n, SEARCHED))
    assert all(sorted(keys) == expected for keys in pages)


def test_sigterm_during_a_scan_stops_the_server_within_a_second(filled):
    server, _ = filled

    def scan_until_stopped() -> None:
        try:
            with Client(server.node, timeout_s=30, retries=0) as table:
                while True:
                    for _ in table.keys(BACKTRACKING, count=KEYS):
                        pass
        except Exception:
            pass  # the server went away under it

    threading.Thread(target=scan_until_stopped, daemon=True).start()
    time.sleep(0.3)
    stopped = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    assert time.monotonic() - stopped < 1.0 + 0.5  # 0.5 s of slack for a loaded machine
    assert "stopped" in server.log


def test_a_pattern_too_costly_to_search_is_refused(filled):
    server, _ = filled
    with Client(server.node, timeout_s=5) as table:
        with pytest.raises(InvalidRequestError, match="pattern too complex") as refused:
            table.scan(0, "*" + "?" * 40 + "*")
        assert refused.value.code == Status.TOO_LARGE
        _, page = table.scan(0, "?" * 40 + "*", 10)  # at the start it costs one try per key: fine
        assert page
