"""Nodes join and leave a cluster while a client writes and reads: no acknowledged key is ever unreadable or lost.

Real server processes started with --join (tests/kept_cluster.py); a
ClusterClient given one node writes keys and reads back ones it wrote before
while a fourth node joins and then leaves.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

from client import Client, ClusterClient
from client.membership import leave
from tests.kept_cluster import Start, eventually, node, states
from tests.servers import ServerProcess, free_port

READY3 = {"n1": "ready", "n2": "ready", "n3": "ready"}


def start_three(start_server: Start, data: Path | None = None) -> list[ServerProcess]:
    def args(name: str) -> tuple[str, ...]:
        return ("--data-dir", str(data / name)) if data is not None else ()

    first = node(start_server, "n1", f"127.0.0.1:{free_port()}", args=args("n1"))
    servers = [first, *(node(start_server, name, first, args=args(name)) for name in ("n2", "n3"))]
    eventually(lambda: all(states(server) == READY3 for server in servers))
    return servers


class Workload:
    """A thread that writes new keys and overwrites a few hot ones, and reads back what was acknowledged.

    Every read is checked against what had been acknowledged before it
    began: a key not found, or a hot key older than its last acknowledged
    value, is a failure.
    """

    def __init__(self, seed: str) -> None:
        self.table = ClusterClient(seed, timeout_s=1.0, retries=1)
        self.acknowledged: dict[str, str] = {}
        self.hot = {f"hot{i}": 0 for i in range(5)}
        self.failures: list[str] = []
        self.writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._random = random.Random(7)

    def __enter__(self) -> Workload:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.table.close()

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            index += 1
            key, value = f"key{index}", f"value{index}"
            if self.table.set(key, value):
                self.acknowledged[key] = value
            hot = self._random.choice(list(self.hot))
            if self.table.set(hot, str(index)):
                self.hot[hot] = index
            self.writes += 2
            self._check_one()

    def _check_one(self) -> None:
        key = self._random.choice(list(self.acknowledged))
        got = self.table.get(key)
        if got != self.acknowledged[key]:
            self.failures.append(f"{key}: read {got!r}, acknowledged {self.acknowledged[key]!r}")
        hot = self._random.choice(list(self.hot))
        floor = self.hot[hot]
        got = self.table.get(hot)
        if floor and (got is None or int(got) < floor):
            self.failures.append(f"{hot}: read {got!r} after {floor} was acknowledged")


def copies_missing(servers: dict[str, ServerProcess], acknowledged: dict[str, str]) -> list[str]:
    """The acknowledged keys some owner (on the ring as the nodes now see it) does not hold."""
    by_owner: dict[str, list[str]] = {}
    with ClusterClient(next(iter(servers.values())).node) as table:
        table.ping()  # the first call finds the members
        for key in acknowledged:
            for owner in table.owners(key):
                by_owner.setdefault(owner, []).append(key)
    missing = []
    for owner, keys in by_owner.items():
        with Client(servers[owner].node, timeout_s=5.0) as direct:
            missing += [f"{owner}: {key}" for key, value in zip(keys, direct.mget(keys), strict=True)
                        if value != acknowledged[key]]
    return missing


def everything_readable(seed: str, workload: Workload) -> None:
    with ClusterClient(seed, timeout_s=2.0) as table:
        keys = list(workload.acknowledged)
        assert table.mget(keys) == [workload.acknowledged[key] for key in keys]
        assert table.mget(list(workload.hot)) == [str(index) for index in workload.hot.values()]


def test_three_nodes_grow_to_four_and_shrink_back_while_a_client_writes_and_reads(start_server: Start) -> None:
    servers = start_three(start_server)
    with Workload(servers[0].node) as workload:
        eventually(lambda: workload.writes > 300)
        fourth = node(start_server, "n4", servers[1])
        eventually(lambda: all(states(server).get("n4") == "ready" for server in servers), timeout_s=60)
        eventually(lambda: "n4" in workload.table.nodes and not workload.table.changing)
        written = workload.writes
        eventually(lambda: workload.writes > written + 300)  # written to the four nodes' ring
        four = dict(zip(("n1", "n2", "n3", "n4"), [*servers, fourth], strict=True))
        assert copies_missing(four, dict(workload.acknowledged)) == []  # it pulled what it owns
        answer = leave(fourth.node, timeout_s=60)
        assert answer["state"] == "left" and answer["pushed"] > 0
        eventually(lambda: all(states(server).get("n4") == "left" for server in servers))
        written = workload.writes
        eventually(lambda: workload.writes > written + 100)  # clients drop it from their rings
        assert fourth.stop() == 0
        written = workload.writes
        eventually(lambda: workload.writes > written + 300)
    assert workload.failures == [], workload.failures[:10]
    assert not any("Traceback" in server.log for server in [*servers, fourth])
    everything_readable(servers[2].node, workload)
    three = dict(zip(("n1", "n2", "n3"), servers, strict=True))
    assert copies_missing(three, workload.acknowledged) == []  # it pushed what it held to the new owners


def test_a_node_restarted_from_its_data_dir_catches_up_on_what_it_missed(start_server: Start, tmp_path: Path) -> None:
    servers = start_three(start_server, tmp_path)
    keys = [f"key{i}" for i in range(300)]
    with ClusterClient(servers[0].node, timeout_s=1.0) as table:
        table.mset({key: "old" for key in keys})
        assert servers[1].stop() == 0
        table.mset({key: "new" for key in keys[:100]})
        for key in keys[100:200]:
            table.delete(key)
    again = node(start_server, "n2", servers[0], args=("--data-dir", str(tmp_path / "n2")))
    eventually(lambda: all(states(server) == READY3 for server in (servers[0], servers[2], again)), timeout_s=60)
    with ClusterClient(servers[0].node) as table:
        table.get(keys[0])  # the first call finds the members
        mine = [key for key in keys if "n2" in table.owners(key)]
    assert mine
    # Back well within --tombstone-grace-s (a day): it kept its records (tests/test_rejoin.py has the rest).
    assert f"loaded {len(mine)} keys" in again.log
    assert not list((tmp_path / "n2").glob("discarded-*"))
    with Client(again.node) as direct:  # the node itself, not the cluster, holds what it missed
        for key in mine:
            want = "new" if key in keys[:100] else None if key in keys[100:200] else "old"
            assert direct.get(key) == want, key
