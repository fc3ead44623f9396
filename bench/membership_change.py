"""What a node joining and leaving a kept membership costs: time, records moved, and the clients' refresh.

    python3 bench/membership_change.py [--keys 20000] [--gets 5000] [--rounds 5]

Starts three in-memory nodes with ``--join`` on loopback, fills ``--keys``
keys (R=2) through ``ClusterClient``, then:

* starts a fourth node and times it from its start until every node sees it
  ``ready`` (the join waits ``SETTLE_S``, then pulls its records), with the
  records it pulled (its log says how many) and the share of keys it owns;
* makes it leave (``client.membership.leave``) and times that, with the
  records it pushed;
* times ``--gets`` lockstep ``get`` calls through ``ClusterClient`` given
  the same three nodes with ``--join`` (the client refreshes the membership
  about every second) and three without (a static cluster, never
  refreshed), ``--rounds`` times each, interleaved; the medians.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from client import ClusterClient
from client.client import Client
from client.membership import MEMBERS, leave
from common.membership import SETTLE_S
from tests.servers import ServerProcess, free_port


def states(server: ServerProcess) -> dict[str, str]:
    with Client(server.node, timeout_s=2.0) as client:
        return {name: entry["state"] for name, entry in client._execute(MEMBERS)["members"].items()}


def wait(check: object, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("the cluster did not settle")
        time.sleep(0.02)


def kept_node(name: str, seed: str) -> ServerProcess:
    return ServerProcess(["--node-name", name, "--advertise", "127.0.0.1", "--join", seed])


def gets_per_s(seed: str | list[str], keys: int, gets: int) -> float:
    with ClusterClient(seed, timeout_s=2.0) as table:
        table.get("key0")  # the first call finds the members
        started = time.perf_counter()
        for index in range(gets):
            table.get(f"key{index % keys}")
        return gets / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--gets", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    servers: list[ServerProcess] = []
    try:
        servers.append(kept_node("n1", f"127.0.0.1:{free_port()}"))
        servers += [kept_node("n2", servers[0].node), kept_node("n3", servers[0].node)]
        wait(lambda: all(set(states(s).values()) == {"ready"} and len(states(s)) == 3 for s in servers))
        with ClusterClient(servers[0].node, timeout_s=5.0) as table:
            for start in range(0, args.keys, 1000):
                table.mset({f"key{i}": f"value{i}" for i in range(start, min(args.keys, start + 1000))})
        print(f"{args.keys} keys, R=2, 3 nodes; settle time {SETTLE_S} s")

        started = time.monotonic()
        fourth = kept_node("n4", servers[0].node)
        servers.append(fourth)
        wait(lambda: all(states(s).get("n4") == "ready" for s in servers))
        join_s = time.monotonic() - started
        pulled = re.search(r"(\d+) records pulled", fourth.log)
        with ClusterClient(servers[0].node) as table:
            table.get("key0")
            owned = sum("n4" in table.owners(f"key{i}") for i in range(args.keys))
        print(f"join: {join_s:.2f} s from start to ready everywhere; pulled {pulled.group(1) if pulled else '?'} "
              f"records; n4 owns {owned / args.keys:.1%} of the keys")

        started = time.monotonic()
        answer = leave(fourth.node, timeout_s=120)
        print(f"leave: {time.monotonic() - started:.2f} s; pushed {answer['pushed']} records")

        fourth.stop()
        static = [ServerProcess([]) for _ in range(3)]
        servers += static
        with ClusterClient([s.node for s in static], timeout_s=5.0) as table:
            for start in range(0, args.keys, 1000):
                table.mset({f"key{i}": f"value{i}" for i in range(start, min(args.keys, start + 1000))})
        kept, plain = [], []
        for _ in range(args.rounds):  # interleaved: the machine's load changes
            kept.append(gets_per_s(servers[0].node, args.keys, args.gets))
            plain.append(gets_per_s([s.node for s in static], args.keys, args.gets))
        print(f"lockstep get through ClusterClient, median of {args.rounds}: kept membership "
              f"{statistics.median(kept):,.0f}/s, static cluster {statistics.median(plain):,.0f}/s")
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
