"""The compose cluster changing under a continuous workload, judged by what its clients saw.

A recorder (tests/cluster_workload.py) runs in a container on the compose
network -- the image's Python with this tree's ``client`` package mounted,
the same code the image's nodes were built from -- writing, deleting and
reading through a ``ClusterClient`` given node1,node2,node3 (the nodes keep
the membership, R=2) while the test changes the cluster; the checker then
counts what clients must never see.
One compose project serves the module (each scenario uses keys of its own).

* A node stopped, so that it misses writes and deletes, then started again
  with its old volume.
* A rolling restart: each node recreated in turn (a new container, a new
  address, the same name and volume). The next node goes only when the
  recorder has reached the last one by its name and clients have had time
  to use it again (``AFTER_S``), as a rollout waits for each pod to be
  ready (and ``minReadySeconds``, kind/memlookup.yaml). podman's network DNS
  (aardvark-dns) answers nothing for 25 to 35 s after a container is
  recreated, so that is how long clients need to learn the new address (the
  nodes that kept theirs are reached at their last answer, common/address.py).
* Scaling 3 -> 5 -> 3, the way README.md says to scale a compose cluster:
  node4, then node5 (profile ``scale``) started, each ready (its health
  check: it has joined and pulled its keys) and reached by the recorder
  before the next change; then node5, then node4 removed, each after its
  ``leave`` (in its container, as kind's preStop hook runs it) has pushed its
  records. The recorder is given node1..node3 only: it learns the other
  members from the nodes, as the client service does. After a node is
  added, ``AFTER_S``, as for the restart (a client may have found the new
  node down before its name resolved); after a removal, ``STEADY_S``.

Every anomaly the checker knows must be absent: no key unreadable at any
moment, none lost, no delete undone, no older value read outside a change.

Each test prints its figures (``pytest -s -m containers
tests/test_cluster_changes.py``); docs/CLUSTER.md ("Consistency, as
measured") gives them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from client.routing import DEAD_FOR_S
from tests.cluster_workload import History, RecorderProcess, Report, check
from tests.containers import IMAGE, NETWORK, NODES, PROJECT, SCALE_NODES, Stack, podman
from tests.servers import ROOT

pytestmark = [pytest.mark.containers, pytest.mark.timeout(600)]

RECORDER = f"{PROJECT}-recorder"
#: How long the workload runs before a change (and a node stays away).
STEADY_S = 4.0
#: How long it runs after a change, and between two nodes of a rolling restart: long enough for clients
#: to try again a node they found down (they skip it for DEAD_FOR_S), so that reads reach what it came
#: back with, and the next node down does not leave a key they share with no owner in use.
AFTER_S = DEAD_FOR_S + STEADY_S


@pytest.fixture(scope="module")
def cluster(image: str) -> Iterator[Stack]:
    """The three nodes, up once for the module."""
    stack = Stack()
    stack.down()  # what a killed run left
    try:
        stack.up()
        yield stack
    finally:
        podman("rm", "-f", "-v", "-t", "0", RECORDER)
        stack.down()
        assert stack.containers() == []


@contextmanager
def recording(prefix: str) -> Iterator[RecorderProcess]:
    """The recorder running (its static keys written, its workers started) on the compose network."""
    podman("rm", "-f", "-v", "-t", "0", RECORDER)
    recorder = RecorderProcess([
        "podman", "run", "--rm", "-i", "--name", RECORDER, "--network", NETWORK,
        "-v", f"{ROOT}:/src:ro", "-w", "/src", "-e", "PYTHONPATH=/src", "-e", "PYTHONDONTWRITEBYTECODE=1",
        IMAGE, "python3", "-m", "tests.cluster_workload", "--nodes", ",".join(NODES), "--prefix", prefix,
    ])
    try:
        yield recorder
    finally:
        recorder.kill()
        podman("rm", "-f", "-v", "-t", "0", RECORDER)


def judged(history: History, title: str, request: pytest.FixtureRequest, tmp_path: Path,
           figures: dict[str, object] | None = None) -> Report:
    """The checker's report, printed with its figures (and ``figures``, the test's own); the history kept
    in a file for a closer look."""
    report = check(history)
    report.figures.update(figures or {})
    kept = tmp_path / "history.json"
    kept.write_text(json.dumps(history.to_json()))
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\n== {title} (history: {kept})\n{report.summary()}")
    return report


def test_a_node_that_missed_writes_and_deletes_returns_with_its_old_volume(cluster: Stack, request, tmp_path):
    with recording("stopped") as recorder:
        time.sleep(STEADY_S)
        recorder.begin("node2 away")
        assert cluster.compose("stop", "node2").returncode == 0
        time.sleep(2 * STEADY_S)  # the writers go on: node2 misses sets and deletes of its keys
        assert cluster.compose("start", "node2").returncode == 0
        cluster.wait_healthy(["node2"])
        recorder.reach("node2")
        recorder.end("node2 away")
        time.sleep(AFTER_S)
        history = recorder.stop()
    report = judged(history, "node2 stopped, then started with its old volume", request, tmp_path)
    assert report.figures["writes acknowledged during 'node2 away'"] > 0
    counts = report.counts()
    assert counts == dict.fromkeys(counts, 0), report.summary()


def test_a_rolling_restart_gives_every_node_a_new_address_and_hides_no_key(cluster: Stack, request, tmp_path):
    with recording("rolling") as recorder:
        time.sleep(STEADY_S)
        for node in NODES:
            before = cluster.address(node)
            recorder.begin(f"recreate {node}")
            cluster.recreate(node)
            recorder.reach(node)  # as a rollout waits for the pod to be ready: here, found by its name
            recorder.end(f"recreate {node}")
            assert cluster.address(node) != before
            time.sleep(AFTER_S)
        history = recorder.stop()
    report = judged(history, "rolling restart: node1, node2, node3 recreated in turn", request, tmp_path)
    counts = report.counts()
    assert counts == dict.fromkeys(counts, 0), report.summary()


def test_scaling_from_3_to_5_nodes_and_back_hides_no_key(cluster: Stack, request, tmp_path):
    assert len(NODES) + len(SCALE_NODES) == 5, "docker-compose.yml: two nodes under the profile scale"
    moved: dict[str, object] = {}
    with recording("scale") as recorder:
        time.sleep(STEADY_S)
        moved["records the cluster held before (keys and tombstones, every copy)"] = sum(
            node["keys"] + node["tombstones"] for node in cluster.stats().values())
        for node in SCALE_NODES:
            recorder.begin(f"add {node}")
            moved[f"records {node} pulled"] = cluster.add(node)
            recorder.reach(node)  # the recorder's clients reach it by its name
            recorder.end(f"add {node}")
            time.sleep(AFTER_S)
        assert sorted(cluster.stats()) == NODES + SCALE_NODES  # the client service learnt the new members
        for node in reversed(SCALE_NODES):
            recorder.begin(f"remove {node}")
            started = time.monotonic()
            moved[f"records {node} pushed"] = cluster.leave(node)
            moved[f"{node}'s leave took"] = f"{time.monotonic() - started:.1f} s"
            assert cluster.compose("down", "-t", "5", node).returncode == 0
            recorder.end(f"remove {node}")
            time.sleep(STEADY_S)  # no node was down: no client skips one
        assert sorted(cluster.stats()) == NODES
        history = recorder.stop()
    report = judged(history, "scaling: node4, node5 added, then node5, node4 removed", request, tmp_path, moved)
    assert all(value for name, value in moved.items() if name.startswith("records")), moved  # each moved some
    counts = report.counts()
    assert counts == dict.fromkeys(counts, 0), report.summary()
