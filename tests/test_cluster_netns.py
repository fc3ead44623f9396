"""The cluster on real hosts: each server in its own network namespace, with its own address.

Clients run in the root namespace (10.77.0.1 on the bridge) and, for the CLI
tests, in a client namespace with its own /etc/hosts. With R=2 every key
must stay readable, with the right value, when any one node dies or is cut
off, and rebalance must restore two copies so that a second, different node
can fail afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from client import Client, ClusterClient, NodeUnavailableError
from client.rebalance import rebalance
from common.placement import Placement
from tests.netlab import NetLab, build_lab
from tests.servers import ServerProcess, run_cli

pytestmark = pytest.mark.netns

PORT = 7400
KEYS = 10_000
BATCH = 1_000
SERVER_HOSTS = {"s1": 11, "s2": 12, "s3": 13, "s4": 14}


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    yield from build_lab({**SERVER_HOSTS, "c": 2})


class Nodes:
    """The servers of one test, by host name; all killed at the end."""

    def __init__(self, lab: NetLab) -> None:
        self.lab = lab
        self.running: dict[str, ServerProcess] = {}

    def start(self, name: str) -> str:
        address = self.lab.hosts[name]
        self.running[name] = ServerProcess(
            ["--bind", address, "--port", str(PORT)], prefix=self.lab.prefix(name), host=address,
            env={"MEMLOOKUP_ALLOW": "10.77.0.0/24"},  # peers beyond loopback
        )
        return self.running[name].node

    def kill(self, name: str) -> None:
        self.running.pop(name).kill()

    def node(self, name: str) -> str:
        return f"{self.lab.hosts[name]}:{PORT}"

    def stop_all(self) -> None:
        for server in self.running.values():
            server.kill()


@pytest.fixture
def nodes(lab: NetLab) -> Iterator[Nodes]:
    started = Nodes(lab)
    try:
        yield started
    finally:
        started.stop_all()
        for name in SERVER_HOSTS:
            lab.plug(name)


def cluster(*names: str, nodes: Nodes) -> ClusterClient:
    return ClusterClient([nodes.node(n) for n in names], replicas=2, timeout_s=1.0, retries=0)


def until_answers(node: str, timeout_s: float = 20.0) -> None:
    """Wait for a node to answer (a link just set up, or a restart, takes a moment)."""
    deadline = time.monotonic() + timeout_s
    with Client(node, timeout_s=0.5, retries=0) as direct:
        while True:
            try:
                direct.ping()
                return
            except NodeUnavailableError:
                assert time.monotonic() < deadline, f"{node} does not answer"


def write(table: ClusterClient, prefix: str, count: int = KEYS) -> dict[str, str]:
    written: dict[str, str] = {}
    for start in range(0, count, BATCH):
        batch = {f"{prefix}:{i}": f"value-{prefix}-{i}" for i in range(start, start + BATCH)}
        table.mset(batch)
        written.update(batch)
    return written


def readable_share(table: ClusterClient, expected: dict[str, str]) -> float:
    """Fraction of ``expected`` read back with the right value."""
    keys = list(expected)
    values = table.mget(keys)
    return sum(1 for key, value in zip(keys, values, strict=True) if value == expected[key]) / len(keys)


def copies_in_place(names: list[str], nodes: Nodes, expected: dict[str, str]) -> float:
    """Fraction of keys held, with the right value, by every one of their owners."""
    placement = Placement([nodes.node(n) for n in names], 2)
    keys = list(expected)
    held: dict[str, dict[str, str | None]] = {}
    for name in names:
        with Client(nodes.node(name), timeout_s=2.0) as direct:
            values = [v for start in range(0, len(keys), BATCH) for v in direct.mget(keys[start:start + BATCH])]
            held[nodes.node(name)] = dict(zip(keys, values, strict=True))
    good = sum(
        1 for key in keys if all(held[owner][key] == expected[key] for owner in placement.owners(key))
    )
    return good / len(keys)


def writes_work(table: ClusterClient, tag: str, expected: dict[str, str]) -> None:
    """Single-key writes and a batch succeed, and read back."""
    assert table.set(f"{tag}:single", "one") is True
    assert table.incr(f"{tag}:counter", 3) == 3
    assert table.cas(f"{tag}:single", "one", "two") is True
    expected[f"{tag}:single"] = "two"
    expected[f"{tag}:counter"] = "3"
    expected.update(write(table, tag, BATCH))


def test_r2_survives_a_dead_node_a_cut_link_and_after_rebalance_another_dead_node(nodes: Nodes) -> None:
    names = ["s1", "s2", "s3"]
    for name in names:
        nodes.start(name)
    with cluster(*names, nodes=nodes) as table:
        expected = write(table, "key")
    assert copies_in_place(names, nodes, expected) == 1.0

    # Any one node killed: everything readable, writes still succeed.
    for victim in names:
        nodes.kill(victim)
        with cluster(*names, nodes=nodes) as table:
            assert readable_share(table, expected) == 1.0
            writes_work(table, f"while-{victim}-dead", expected)
            assert readable_share(table, expected) == 1.0
        until_answers(nodes.start(victim))  # back, empty
        with cluster(*names, nodes=nodes) as table:
            report = rebalance(table)
        assert report.complete and report.copied > 0
        assert copies_in_place(names, nodes, expected) == 1.0

    # One node's link cut (the process keeps running, unreachable).
    nodes.lab.cut("s2")
    with cluster(*names, nodes=nodes) as table:
        assert readable_share(table, expected) == 1.0
        writes_work(table, "while-s2-cut", expected)
        assert readable_share(table, expected) == 1.0
    nodes.lab.plug("s2")
    until_answers(nodes.node("s2"))
    with cluster(*names, nodes=nodes) as table:
        report = rebalance(table)
    assert report.complete
    assert copies_in_place(names, nodes, expected) == 1.0

    # Then a different node dies: still everything.
    nodes.kill("s3")
    with cluster(*names, nodes=nodes) as table:
        assert readable_share(table, expected) == 1.0
        writes_work(table, "after", expected)


def test_a_fourth_node_takes_about_a_quarter_and_rebalance_puts_every_key_in_place(nodes: Nodes) -> None:
    old, new = ["s1", "s2", "s3"], ["s1", "s2", "s3", "s4"]
    for name in new:
        nodes.start(name)
    with cluster(*old, nodes=nodes) as table:
        expected = write(table, "key")

    with cluster(*new, nodes=nodes) as table:
        first = rebalance(table)
        again = rebalance(table)
        assert readable_share(table, expected) == 1.0
    copies = 2 * KEYS
    moved = first.copied / copies
    print(f"adding a 4th node moved {first.copied} of {copies} copies ({moved:.1%})")
    assert 0.15 <= moved <= 0.25 + 0.03
    assert first.removed == first.copied  # each moved copy left its old node
    assert (again.copied, again.removed, again.examined) == (0, 0, copies)

    # Every key is exactly where the new membership puts it, and nowhere else.
    time.sleep(0.05)  # removed copies are empty values that expire after 1 ms
    placement = Placement([nodes.node(n) for n in new], 2)
    for name in new:
        with Client(nodes.node(name), timeout_s=2.0) as direct:
            held = set(direct.keys())
        should = {key for key in expected if nodes.node(name) in placement.owners(key)}
        assert held == should, name
    assert copies_in_place(new, nodes, expected) == 1.0


def test_rebalance_keeps_writes_made_while_it_runs(nodes: Nodes) -> None:
    """Clients writing through the new membership during a rebalance never lose a write."""
    import threading

    old, new = ["s1", "s2"], ["s1", "s2", "s3"]
    for name in new:
        nodes.start(name)
    with cluster(*old, nodes=nodes) as table:
        expected = write(table, "key", 5_000)

    done = threading.Event()
    rewritten: dict[str, str] = {}

    def writer() -> None:
        with cluster(*new, nodes=nodes) as table:
            i = 0
            while not done.is_set() or i < 200:
                key = f"key:{(i * 7919) % 5_000}"
                value = f"new-{i}"
                table.set(key, value)
                rewritten[key] = value
                if i % 50 == 0:
                    table.delete(f"key:{(i * 104729) % 5_000}")
                    rewritten[f"key:{(i * 104729) % 5_000}"] = ""
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with cluster(*new, nodes=nodes) as table:
            report = rebalance(table)
    finally:
        done.set()
        thread.join()
    assert report.complete
    for key, value in rewritten.items():
        expected[key] = value
    gone = {key for key, value in expected.items() if value == ""}
    with cluster(*new, nodes=nodes) as table:
        live = {key: value for key, value in expected.items() if key not in gone}
        assert readable_share(table, live) == 1.0
        assert table.mget(sorted(gone)) == [None] * len(gone)


def test_cli_in_a_client_namespace_expands_a_name_with_several_addresses(nodes: Nodes) -> None:
    names = ["s1", "s2", "s3"]
    for name in names:
        nodes.start(name)
    lab = nodes.lab
    lab.hosts_file("c", "127.0.0.1 localhost\n" + "".join(f"{lab.hosts[n]} memlookup-nodes\n" for n in names))
    prefix = lab.prefix("c")

    stats = run_cli("--json", "memlookup-nodes", "stats", prefix=prefix)
    assert stats.returncode == 0, stats.stderr
    assert sorted(json.loads(stats.stdout)["nodes"]) == sorted(nodes.node(n) for n in names)

    assert run_cli("memlookup-nodes", "set", "norway", "oslo", prefix=prefix).returncode == 0
    found = run_cli("memlookup-nodes", "get", "norway", prefix=prefix)
    assert (found.returncode, found.stdout) == (0, "oslo\n")
    # Two copies, on two different hosts.
    holders = [n for n in names if Client(nodes.node(n), timeout_s=2.0).get("norway") == "oslo"]
    assert len(holders) == 2

    # --nodes / MEMLOOKUP_NODES instead of NODE, and a comma list of the same hosts.
    listed = ",".join(lab.hosts[n] for n in names)
    env_get = run_cli("get", "norway", prefix=prefix, env={"MEMLOOKUP_NODES": listed})
    assert (env_get.returncode, env_get.stdout) == (0, "oslo\n")
    flag_get = run_cli("--nodes", listed, "get", "norway", prefix=prefix)
    assert (flag_get.returncode, flag_get.stdout) == (0, "oslo\n")

    # A dead node: the CLI still reads, and ping names the node that is down.
    nodes.kill("s1")
    still = run_cli("--timeout", "0.3", "--retries", "0", "memlookup-nodes", "get", "norway", prefix=prefix)
    assert (still.returncode, still.stdout) == (0, "oslo\n")
    ping = run_cli("--timeout", "0.3", "--retries", "0", "memlookup-nodes", "ping", prefix=prefix)
    assert ping.returncode == 4 and nodes.node("s1") in ping.stderr
