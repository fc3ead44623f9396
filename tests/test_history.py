"""Concurrent histories against every server mode, judged by tests/history.py.

Each mode starts its servers, records a history of worker processes and
threads (shared and own Clients, pipelines, raw ``batch`` senders, or
ClusterClients) while the mode's faults run, reads every key at the end, and
checks the whole: linearizable per key, every ``incr`` counted once, reply
shapes, no extra replies, no unexpected errors. The default run is short
(about two seconds of load per mode); ``MEMLOOKUP_HISTORY_LONG=1`` runs each
mode for ``MEMLOOKUP_HISTORY_SECONDS`` (default 30) with more keys.

Cluster modes: without faults, ``ClusterClient`` is checked for
linearizability like one node, ``del`` included: the first owner applies
every write and versions it, and the other owner keeps the newer version
whatever order the copies arrive in, so a delete racing a write of the same
key can no longer leave a copy behind that reads would bring back (this
checker found that anomaly in about one run in five before keys carried
versions).

With a node paused past the client timeout, a write's copy can miss the
paused owner, and a later read while the other owner is paused answers from
the stale one (docs/CLUSTER.md), so reads may go back in time: what is
checked then is reply shapes, errors, and that no read returns a value that
no write of that key had started (no phantoms, no refused write visible).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from client import Client, MemlookupError
from common.keys import create_key_pair
from tests.history import FAIL, OK, History, Workload, check, final_read, record
from tests.servers import ServerProcess

LONG = os.environ.get("MEMLOOKUP_HISTORY_LONG", "") not in ("", "0")
LONG_SECONDS = float(os.environ.get("MEMLOOKUP_HISTORY_SECONDS", "30"))

#: The memory cap of the eviction modes: a few MB above what the server needs empty.
CAP = "40mb"
BALLAST_BYTES = 64 * 1024


@dataclass(frozen=True)
class Mode:
    """How to run the servers, what faults to inject and what the checker allows."""

    args: tuple[str, ...] = ()
    data_dir: bool = False
    nodes: int = 1
    fault: str | None = None  # "kill" (SIGKILL + restart), "pause" (SIGSTOP, SIGCONT)
    ballast: bool = False  # fill the memory cap from a client of its own meanwhile
    evictions: bool = False
    allowed_errors: tuple[str, ...] = ()
    strict: bool = True
    curve: bool = False
    workload: dict[str, Any] = field(default_factory=dict)


FAULTY = {"timeout_s": 0.25, "retries": 3, "duration_s": 3.0}

MODES = {
    "memory": Mode(),
    "fsync-always": Mode(("--fsync", "always"), data_dir=True),
    "fsync-everysec": Mode(("--fsync", "everysec"), data_dir=True),
    "fsync-no": Mode(("--fsync", "no"), data_dir=True),
    "compaction": Mode(("--fsync", "always", "--compact-after-bytes", "4096"), data_dir=True),
    "noeviction": Mode(("--max-memory", CAP, "--eviction", "noeviction"), ballast=True,
                       allowed_errors=("OutOfMemoryError",)),
    "allkeys-lru": Mode(("--max-memory", CAP, "--eviction", "allkeys-lru"), ballast=True, evictions=True),
    "volatile-ttl": Mode(("--max-memory", CAP, "--eviction", "volatile-ttl"), ballast=True, evictions=True,
                         workload={"ttl_s": 3600.0}),
    "curve": Mode(curve=True),
    # Compactions get killed too under always.
    "kill-always": Mode(("--fsync", "always", "--compact-after-bytes", "16384"), data_dir=True, fault="kill",
                        workload=FAULTY),
    "kill-everysec": Mode(("--fsync", "everysec"), data_dir=True, fault="kill", workload=FAULTY),
    "kill-no": Mode(("--fsync", "no"), data_dir=True, fault="kill", workload=FAULTY),
    "pause": Mode(fault="pause", workload=FAULTY),
    "pause-fsync-always": Mode(("--fsync", "always"), data_dir=True, fault="pause", workload=FAULTY),
    "cluster": Mode(nodes=3, workload={"kinds": ("cluster", "cluster", "own", "async")}),
    "cluster-pause": Mode(nodes=3, fault="pause", strict=False,
                          workload={"kinds": ("cluster", "cluster", "own", "async"), "timeout_s": 0.25, "retries": 0,
                                    "duration_s": 3.0}),
}


class Servers:
    """The mode's servers; restarts keep a node's port and data directory.

    ``server_key``, ``client_key``: the CurveZMQ options for clients (None without CURVE).
    """

    def __init__(self, start_server: Callable[..., ServerProcess], mode: Mode, tmp_path: Path) -> None:
        self.start_server = start_server
        self.server_key: str | None = None
        self.client_key: str | None = None
        secured: list[str] = []
        if mode.curve:
            create_key_pair(tmp_path / "server", "server")
            create_key_pair(tmp_path / "authorized", "worker")
            secured = ["--curve-secret-key", str(tmp_path / "server" / "server.key_secret"),
                       "--authorized-keys", str(tmp_path / "authorized")]
            self.server_key = str(tmp_path / "server" / "server.key")
            self.client_key = str(tmp_path / "authorized" / "worker.key_secret")
        self.args = [[*mode.args, *secured, *(["--data-dir", str(tmp_path / f"data{i}")] if mode.data_dir else [])]
                     for i in range(mode.nodes)]
        self.servers = [start_server(*args) for args in self.args]
        self.started = list(self.servers)  # every process, restarts included
        self.nodes = tuple(server.node for server in self.servers)
        self.faults = 0
        self.fault_times: list[tuple[float, float]] = []

    def kill_and_restart(self, index: int) -> None:
        server = self.servers[index]
        server.signal(signal.SIGKILL)
        server.proc.wait(10)
        self.servers[index] = self.start_server(*self.args[index], "--port", str(server.port))
        self.started.append(self.servers[index])
        self.faults += 1

    def pause(self, index: int, paused_s: float) -> None:
        server = self.servers[index]
        self.fault_times.append((round(time.monotonic(), 2), paused_s))
        server.signal(signal.SIGSTOP)
        try:
            time.sleep(paused_s)
        finally:
            server.signal(signal.SIGCONT)
        self.faults += 1

    def client(self, index: int = 0) -> Client:
        return Client(self.nodes[index], timeout_s=5, retries=2, server_key=self.server_key,
                      client_key=self.client_key)


def _faults(servers: Servers, mode: Mode, duration_s: float, seed: int) -> Callable[[], None]:
    """What runs in the test process while the workers work: the mode's faults, until near the end."""
    rng = random.Random(seed)

    def run() -> None:
        deadline = time.monotonic() + duration_s - 0.3
        # Pauses shorter than the client's timeout x (retries + 1), so that retries
        # land after SIGCONT, and longer ones, so that calls give up (info).
        pauses = itertools.chain((0.5, 1.2), iter(lambda: rng.choice((0.4, 0.6, 0.8, 1.2)), None))
        _wait_for_the_workers(servers)
        time.sleep(rng.uniform(0.1, 0.3))
        while time.monotonic() < deadline or servers.faults < 2:  # two at least, however slow the machine
            index = rng.randrange(len(servers.servers))
            if mode.fault == "kill":
                servers.kill_and_restart(index)
            else:
                servers.pause(index, next(pauses))
            time.sleep(rng.uniform(0.2, 0.6))

    return run


def _wait_for_the_workers(servers: Servers, calls: int = 50, limit_s: float = 15.0) -> None:
    """Until the nodes have answered ``calls`` requests: a fault before the workers
    run (they start slowly on a loaded machine) would test nothing."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        answered = 0
        for index in range(len(servers.nodes)):
            with servers.client(index) as table:
                answered += sum(count for op, count in table.stats()["ops"].items() if op != "stats")
        if answered >= calls:
            return
        time.sleep(0.05)


def _ballast(servers: Servers, mode: Mode, stop: threading.Event) -> threading.Thread:
    """A client of its own filling the memory cap: large values, then smaller ones when
    those no longer fit, so that the cap is reached tightly (and under noeviction it
    deletes some now and then, so that writes are sometimes refused and sometimes not)."""

    def run() -> None:
        rng = random.Random(7)
        ttl_s = mode.workload.get("ttl_s")
        sizes = [BALLAST_BYTES, 4096, 256, 16]
        size = 0
        with servers.client() as table:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if "noeviction" in mode.args and n % 8 == 0:
                        table.delete(f"ballast:{rng.randrange(n)}")
                    else:
                        table.set(f"ballast:{n}", "b" * sizes[size], ttl_s=ttl_s)
                        size = max(0, size - 1)
                except MemlookupError:
                    size = min(size + 1, len(sizes) - 1)
                    time.sleep(0.002)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("name", list(MODES))
def test_concurrent_history_passes_the_checker(name, start_server, tmp_path):
    mode = MODES[name]
    servers = Servers(start_server, mode, tmp_path)
    seed = random.randrange(1 << 30)
    workload = Workload(nodes=servers.nodes, prefix=f"{name}.{seed}", seed=seed, server_key=servers.server_key,
                        client_key=servers.client_key, **mode.workload)
    if LONG:
        workload = replace(workload, duration_s=LONG_SECONDS, max_ops=100_000, registers=12, counters=4)
    stop = threading.Event()
    ballast = _ballast(servers, mode, stop) if mode.ballast else None
    started = time.monotonic()
    try:
        history = record(workload, during=_faults(servers, mode, workload.duration_s, seed) if mode.fault else None)
    finally:
        stop.set()
        if ballast is not None:
            ballast.join(10)
    recorded_s = time.monotonic() - started
    final = final_read(workload)
    report = check(history, final, evictions=mode.evictions, allowed_errors=mode.allowed_errors,
                   strict=mode.strict, counters=workload.counter_keys)
    print(f"\n{name}: {report.summary()}; recorded in {recorded_s:.1f} s, seed {seed}")
    assert report.anomalies == [], "\n".join(report.anomalies[:20])
    assert report.outcomes[OK] >= 100, f"too few operations to mean anything: {report.summary()}"
    _assert_the_mode_happened(name, mode, servers, history)


def _assert_the_mode_happened(name: str, mode: Mode, servers: Servers, history: History) -> None:
    """The faults, compactions and evictions the mode is about did happen, or it proved nothing."""
    stats = []
    for index in range(len(servers.nodes)):
        with servers.client(index) as table:
            stats.append(table.stats())
    if mode.fault is not None:
        assert servers.faults >= 2, f"{name}: only {servers.faults} faults"
        if mode.nodes == 1:
            survived = [op for op in history.ops if op.outcome == OK and op.end - op.start > FAULTY["timeout_s"]]
            longest = max((op.end - op.start for op in history.ops if op.outcome == OK), default=0)
            assert survived, (f"{name}: no call outlived a timeout and still got its answer: no retry was tested "
                              f"(longest {longest:.3f} s; faults at {servers.fault_times})")
    if name == "compaction":
        assert stats[0]["persistence"]["compactions"] >= 1, "no compaction ran during the history"
    if "--compact-after-bytes" in mode.args and mode.fault == "kill":
        assert any("compaction" in server.log for server in servers.started), "no compaction started"
    if mode.evictions:
        assert stats[0]["memory"]["evicted_keys"] > 0, "nothing was evicted: the cap was never reached"
    if "noeviction" in mode.args:
        refused = [op for op in history.ops if op.outcome == FAIL and "OutOfMemoryError" in str(op.result)]
        assert refused and stats[0]["memory"]["refused_writes"] > 0, "no write was refused for memory"
    if mode.curve:
        assert stats[0]["auth"]["curve"] is True
