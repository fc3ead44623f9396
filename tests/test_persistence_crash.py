"""Kill the server at random moments under concurrent writers; nothing acknowledged may be lost.

Each round starts a server on the same data directory, lets 8 writer threads
set and delete keys (each writer owns its keys, so the order of its writes is
known), SIGKILLs the server at a random moment, restarts it and checks every
key: its value must be the last one whose reply arrived, or the one write
that was in flight when the server died. A value nobody wrote, or an
acknowledged write that is missing, fails the test. A small
``--compact-after-bytes`` makes compactions run (and get killed) too.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from typing import Any

import pytest

from client import Client
from common.errors import MemlookupError
from tests.servers import ServerProcess

WRITERS = 8
KEYS_PER_WRITER = 12
COMPACT_AFTER_BYTES = "16384"


def _writer(node: str, wid: int, round_no: int, stop: threading.Event, history: list[list[Any]], seed: int) -> None:
    """Set or delete this writer's keys until the server dies; log every attempt, mark acknowledged ones."""
    rng = random.Random(seed)
    with Client(node, timeout_s=0.3, retries=0) as client:
        n = 0
        while not stop.is_set():
            key = f"w{wid}:{rng.randrange(KEYS_PER_WRITER)}"
            value = None if rng.random() < 0.15 else f"{wid}:{round_no}:{n}"
            entry = [key, value, False]
            history.append(entry)
            try:
                if value is None:
                    client.delete(key)
                else:
                    client.set(key, value)
            except MemlookupError:
                return  # outcome unknown: the server is gone
            entry[2] = True
            n += 1


def _allowed(known: dict[str, str | None], history: list[list[Any]]) -> dict[str, set[str | None]]:
    """For each key, the values a restart may show: the last acknowledged state, or later attempts."""
    allowed: dict[str, set[str | None]] = {key: {value} for key, value in known.items()}
    for key, value, acked in history:
        if acked:
            allowed[key] = {value}
        else:
            allowed[key].add(value)
    return allowed


def _rounds(tmp_path, policy: str, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    data_dir = str(tmp_path / "data")
    args = ["--data-dir", data_dir, "--fsync", policy, "--compact-after-bytes", COMPACT_AFTER_BYTES]
    keys = [f"w{w}:{k}" for w in range(WRITERS) for k in range(KEYS_PER_WRITER)]
    known: dict[str, str | None] = {key: None for key in keys}
    acknowledged_total = 0
    server = ServerProcess(args)
    try:
        for round_no in range(rounds):
            histories: list[list[list[Any]]] = [[] for _ in range(WRITERS)]
            stop = threading.Event()
            threads = [
                threading.Thread(target=_writer, args=(server.node, w, round_no, stop, histories[w], rng.random()))
                for w in range(WRITERS)
            ]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.05, 0.5))
            server.signal(signal.SIGKILL)
            stop.set()
            for thread in threads:
                thread.join(10)
            server.proc.wait(10)
            allowed = _allowed(known, [entry for history in histories for entry in history])
            acknowledged_total += sum(entry[2] for history in histories for entry in history)

            server = ServerProcess(args)  # the next round writes to this one
            with Client(server.node, timeout_s=5.0) as client:
                found = dict(zip(keys, client.mget(keys), strict=True))
                stray = set(client.keys()) - set(keys)
            assert not stray, f"round {round_no}: keys nobody wrote: {sorted(stray)[:5]}"
            for key in keys:
                assert found[key] in allowed[key], (
                    f"round {round_no} ({policy}): {key} is {found[key]!r}, expected one of {allowed[key]!r}"
                )
            known = found
        with Client(server.node, timeout_s=5.0) as client:
            generation = client.stats()["persistence"]["generation"]
        assert generation > 1, "no compaction ran during the rounds; the test did not exercise it"
    finally:
        server.kill()
    assert acknowledged_total > rounds * WRITERS, "the writers hardly wrote anything; the test proved nothing"


@pytest.mark.durability
def test_sigkill_under_always_loses_no_acknowledged_write(tmp_path):
    _rounds(tmp_path, "always", rounds=10, seed=1)


@pytest.mark.durability
def test_process_kill_under_everysec_loses_no_acknowledged_write(tmp_path):
    _rounds(tmp_path, "everysec", rounds=5, seed=2)


@pytest.mark.durability
@pytest.mark.slow
def test_sigkill_under_always_many_rounds(tmp_path):
    _rounds(tmp_path, "always", rounds=20, seed=3)


@pytest.mark.durability
@pytest.mark.slow
def test_process_kill_under_everysec_many_rounds(tmp_path):
    _rounds(tmp_path, "everysec", rounds=10, seed=4)
