"""``memlookup NODE ready`` and ``memlookup NODE leave``: what an orchestrator runs on a node that keeps the membership.

Real server processes started with ``--join`` (tests/kept_cluster.py), the real CLI in a subprocess.
"""

from __future__ import annotations

import json

from client import Client
from tests.kept_cluster import Start, eventually, node, states
from tests.servers import ServerProcess, free_port, run_cli


def ready(server: ServerProcess) -> tuple[int, str]:
    """``memlookup NODE ready``: its exit status and what it printed."""
    done = run_cli(server.node, "ready")
    return done.returncode, done.stdout.strip()


def test_a_node_that_starts_a_cluster_is_ready_once_its_seeds_did_not_answer(start_server: Start) -> None:
    alone = node(start_server, "n1", f"127.0.0.1:{free_port()}")  # its seed is down: it starts a cluster
    eventually(lambda: ready(alone)[0] == 0)
    assert ready(alone) == (0, "ready")
    answer = json.loads(run_cli("--json", alone.node, "ready").stdout)
    assert answer["name"] == "n1" and answer["state"] == "ready"


def test_a_server_without_join_is_ready(start_server: Start) -> None:
    assert ready(start_server()) == (0, "ready")


def test_a_joining_node_is_not_ready_until_it_holds_its_keys(start_server: Start) -> None:
    first = node(start_server, "n1", f"127.0.0.1:{free_port()}")
    eventually(lambda: states(first) == {"n1": "ready"})
    keys = {f"k{index}": f"v{index}" for index in range(200)}
    with Client(first.node) as client:
        client.mset(keys)
    second = node(start_server, "n2", first)
    assert ready(second) == (1, "joining")  # it waits 2.5 s before it pulls its keys
    eventually(lambda: ready(second)[0] == 0)
    assert ready(second) == (0, "ready")
    with Client(second.node) as client:  # R=2 of two nodes: it owns every key, and holds it
        assert client.mget(list(keys)) == list(keys.values())


def test_leave_moves_the_nodes_keys_to_the_others_and_exits_0(start_server: Start) -> None:
    first = node(start_server, "n1", f"127.0.0.1:{free_port()}")
    eventually(lambda: states(first) == {"n1": "ready"})
    second = node(start_server, "n2", first)
    eventually(lambda: states(first) == {"n1": "ready", "n2": "ready"})
    keys = {f"k{index}": f"v{index}" for index in range(200)}
    with Client(second.node) as client:  # written to the leaving node alone: only the leave can move them
        client.mset(keys)
    done = run_cli(second.node, "leave")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "left: moved 200 records to their new owners"
    with Client(first.node) as client:
        assert client.mget(list(keys)) == list(keys.values())
    assert ready(second) == (1, "left")
    assert states(first)["n2"] == "left"


def test_leave_that_cannot_finish_exits_1_and_says_why(start_server: Start) -> None:
    alone = node(start_server, "n1", f"127.0.0.1:{free_port()}")
    eventually(lambda: states(alone) == {"n1": "ready"})
    with Client(alone.node) as client:
        client.set("k", "v")
    done = run_cli(alone.node, "leave", "--wait", "5")  # it waits 2.5 s before it moves keys
    assert done.returncode == 1
    assert "has not left after 5.0 s: no other member owns keys" in done.stderr
    assert ready(alone) == (1, "leaving")  # still answering, and still holding its keys
    with Client(alone.node) as client:
        assert client.get("k") == "v"


def test_leave_of_a_node_without_join_is_refused_clearly(start_server: Start) -> None:
    server = start_server()
    done = run_cli(server.node, "leave")
    assert done.returncode == 3
    assert "keeps no membership (it runs without --join)" in done.stderr
    assert ready(server) == (0, "ready")


def test_ready_and_leave_ask_one_node(start_server: Start) -> None:
    nodes = f"{start_server().node},{start_server().node}"
    for command in ("ready", "leave"):
        done = run_cli(nodes, command)
        assert done.returncode == 2 and f"{command} asks one node; give a single NODE" in done.stderr
