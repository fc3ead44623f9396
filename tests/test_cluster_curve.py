"""Nodes that serve with CURVE and --authorized-keys keep their membership among themselves: each reaches the
others with its --client-key (also when it asks them whether to set its records aside, tests/test_rejoin.py);
a node whose key is not authorized is kept out.

Real server processes (tests/kept_cluster.py) sharing one server key pair, as cluster clients expect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client import ClusterClient
from client.membership import leave
from common.keys import create_key_pair
from tests.kept_cluster import Start, eventually, node, states
from tests.servers import free_port, run_server

READY3 = {"n1": "ready", "n2": "ready", "n3": "ready"}


def test_nodes_with_curve_and_authorized_keys_join_move_keys_and_keep_out_an_unknown_key(
        start_server: Start, tmp_path: Path) -> None:
    authorized = tmp_path / "authorized"
    server_public, server_secret = create_key_pair(tmp_path, "server")
    for name in ("n1", "n2", "n3", "app"):
        create_key_pair(authorized, name)
    _, rogue_secret = create_key_pair(tmp_path, "rogue")
    keys: dict[str, Any] = {"server_key": str(server_public), "client_key": str(authorized / "app.key_secret")}

    def curve(name: str, client_key: Path) -> tuple[str, ...]:
        return ("--curve-secret-key", str(server_secret), "--authorized-keys", str(authorized),
                "--client-key", str(client_key), "--data-dir", str(tmp_path / name), "--tombstone-grace-s", "2")

    first = node(start_server, "n1", f"127.0.0.1:{free_port()}", args=curve("n1", authorized / "n1.key_secret"))
    servers = [first, *(node(start_server, name, first, args=curve(name, authorized / f"{name}.key_secret"))
                        for name in ("n2", "n3"))]
    eventually(lambda: all(states(server, **keys) == READY3 for server in servers))

    written = {f"key{index}": str(index) for index in range(200)}
    with ClusterClient(servers[0].node, timeout_s=2.0, **keys) as table:
        table.mset(written)
        assert table.nodes == ["n1", "n2", "n3"]
    answer = leave(servers[2].node, timeout_s=30, **keys)
    assert answer["state"] == "left" and answer["pushed"] > 0
    assert servers[2].stop() == 0
    with ClusterClient(servers[0].node, timeout_s=2.0, **keys) as table:
        eventually(lambda: table.get("key0") == "0" and table.nodes == ["n1", "n2"])
        assert table.mget(list(written)) == list(written.values())

    # Back after the grace, n3 asks the others over CURVE whether they ran since: they did, so it sets its
    # records aside and joins as a new node.
    back = node(start_server, "n3", first, args=curve("n3", authorized / "n3.key_secret"))
    eventually(lambda: all(states(server, **keys) == READY3 for server in (*servers[:2], back)))
    assert "n1, n2 ran or wrote since" in back.log and list((tmp_path / "n3").glob("discarded-*"))

    rogue = node(start_server, "n4", first, args=curve("n4", rogue_secret))
    assert rogue.wait_for_log("refused this node", timeout_s=10)
    assert first.wait_for_log("client key not authorized")
    assert "n4" not in states(first, **keys)


def test_a_client_key_that_cannot_be_used_is_refused_at_start(tmp_path: Path) -> None:
    _, server_secret = create_key_pair(tmp_path, "server")
    public, _ = create_key_pair(tmp_path, "n1")
    without_curve = run_server("--join", "127.0.0.1:7400", "--client-key", str(tmp_path / "n1.key_secret"))
    assert without_curve.returncode == 2
    assert "--client-key needs --curve-secret-key" in without_curve.stderr
    public_only = run_server("--join", "127.0.0.1:7400", "--curve-secret-key", str(server_secret),
                             "--client-key", str(public))
    assert public_only.returncode == 1
    assert "--client-key" in public_only.stderr and "holds no secret key" in public_only.stderr
