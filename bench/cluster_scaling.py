"""Throughput of the same client load against 1, 2 and 3 nodes (the scaling ratio).

    python3 bench/cluster_scaling.py [--clients 4] [--seconds 3] [--rounds 3] [--replicas 1]

Starts in-memory servers on loopback, fills 10,000 keys, then runs
``--clients`` client processes for ``--seconds`` each, all through
``ClusterClient``, doing one kind of work per run:

* ``get``: single-key reads of random keys;
* ``set``: single-key writes (to R owners each);
* ``mget100``: reads of 100 random keys per call (split by node, in parallel).

Every (nodes, work) pair runs ``--rounds`` times, interleaved, and the
median is reported with its ratio to the one-node figure. Servers and
clients share the machine's cores: on a 2-core machine the figure shows
how little the client side leaves for more servers, not how far the design
scales on separate hosts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import load
from client import ClusterClient
from tests.servers import ServerProcess

KEYS = 10_000
WORK = ("get", "set", "mget100")


def worker(
    nodes: list[str], replicas: int, work: str, seconds: float, seed: int, out: multiprocessing.Queue[int]
) -> None:
    rng = random.Random(seed)
    keys = [f"key:{i}" for i in range(KEYS)]
    done = 0
    with ClusterClient(nodes, replicas=replicas, timeout_s=5.0, retries=0) as table:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            if work == "get":
                table.get(rng.choice(keys))
                done += 1
            elif work == "set":
                table.set(rng.choice(keys), "x" * 32)
                done += 1
            else:
                table.mget(rng.sample(keys, 100))
                done += 100
    out.put(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-nodes", type=int, default=3)
    args = parser.parse_args()

    servers = [ServerProcess() for _ in range(args.max_nodes)]
    try:
        layouts = {n: [s.node for s in servers[:n]] for n in range(1, args.max_nodes + 1)}
        results: dict[tuple[int, str], list[float]] = {}
        for round_ in range(args.rounds):
            for work in WORK:
                for count, nodes in layouts.items():
                    with ClusterClient(nodes, replicas=args.replicas) as table:
                        for start in range(0, KEYS, 1000):
                            table.mset({f"key:{i}": "v" * 32 for i in range(start, start + 1000)})
                    rate = load.rate(worker, (nodes, args.replicas, work, args.seconds), args.clients, args.seconds)
                    results.setdefault((count, work), []).append(rate)
                    print(f"round {round_ + 1} {work:8} {count} node(s): {rate:10.0f} keys/s", file=sys.stderr)
        print(f"\n{args.clients} client processes, R={args.replicas}, {args.seconds:g} s x {args.rounds} rounds, "
              f"{os.cpu_count()} CPUs; median keys/s (ratio to 1 node)")
        print(f"{'work':10}" + "".join(f"{f'{n} node(s)':>22}" for n in layouts))
        for work in WORK:
            base = statistics.median(results[(1, work)])
            cells = []
            for count in layouts:
                median = statistics.median(results[(count, work)])
                cells.append(f"{median:>12.0f} ({median / base:4.2f}x)")
            print(f"{work:10}" + "".join(f"{cell:>22}" for cell in cells))
    finally:
        for server in servers:
            server.kill()


if __name__ == "__main__":
    main()
