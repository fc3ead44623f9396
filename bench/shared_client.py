"""What making a Client safe to share costs: lockstep latency with and without the pool, same run.

    python3 bench/shared_client.py [--requests 20000] [--blocks 20] [--threads 16]

One in-memory server on loopback. Latency: one thread sends ``get`` in
lockstep, in alternating blocks, through ``Client.get`` as shipped (each call
borrows a connection from the client's pool and gives it back; see
client/pool.py) and through the same Client code with one fixed connection
and no pool (what a Client did before it could be shared). Each request is
timed from call to return; the medians and 99th percentiles are printed.
The difference is smaller than the noise of a loopback round trip, so the
pool's own cost is also timed in process (take and give, no socket).

Then throughput: ``--threads`` threads sending ``get`` in lockstep through
one shared Client, and through one Client per thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import timeit
from typing import Any, TypeVar

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from client import Client
from client.pool import Pool
from client.requests import Command
from tests.servers import ServerProcess

T = TypeVar("T")


class _Unshared(Client):
    """A Client as it was before it could be shared: one connection, no pool."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._single = self._new_transport()

    def _call(self, command: Command[T], frame: bytes) -> T:
        return command.parse(self._single.request(frame))

    def close(self) -> None:
        self._single.close()
        super().close()


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency(node: str, requests: int, blocks: int) -> None:
    shared = Client(node, timeout_s=5, retries=0)
    unshared = _Unshared(node, timeout_s=5, retries=0)
    shared.set("key", "v" * 32)
    perf = time.perf_counter
    ways = {"Client.get (pool)": shared.get, "Client.get, no pool (before)": unshared.get}
    samples: dict[str, list[float]] = {name: [] for name in ways}
    per_block = max(1, requests // blocks)
    for get in ways.values():  # warm up
        for _ in range(200):
            get("key")
    for _ in range(blocks):
        for name, get in ways.items():
            out = samples[name]
            for _ in range(per_block):
                started = perf()
                get("key")
                out.append(perf() - started)
    shared.close()
    unshared.close()
    print(f"lockstep get latency, {per_block * blocks} requests each, {blocks} alternating blocks:")
    for name, values in samples.items():
        print(f"  {name:30s} median {statistics.median(values) * 1e6:7.1f} us   "
              f"p99 {_percentile(values, 0.99) * 1e6:7.1f} us")
    pooled = statistics.median(samples["Client.get (pool)"])
    bare = statistics.median(samples["Client.get, no pool (before)"])
    print(f"  difference of the medians: {(pooled - bare) * 1e6:+.2f} us ({(pooled - bare) / bare:+.1%})")
    pool: Pool[Any] = Pool(object)
    pool.give(pool.take())
    n = 200_000
    each = min(timeit.repeat(lambda: pool.give(pool.take()), number=n, repeat=5)) / n
    print(f"  in process, Pool.take + Pool.give: {each * 1e6:.2f} us")


def throughput(node: str, threads: int, per_thread: int) -> None:
    def run(tables: list[Client]) -> float:
        def work(table: Client) -> None:
            for _ in range(per_thread):
                table.get("key")

        workers = [threading.Thread(target=work, args=(tables[i % len(tables)],)) for i in range(threads)]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return threads * per_thread / (time.perf_counter() - started)

    shared = Client(node, timeout_s=5, retries=0)
    own = [Client(node, timeout_s=5, retries=0) for _ in range(threads)]
    for table in [shared, *own]:
        table.ping()
    results: dict[str, list[float]] = {"one shared Client": [], "one Client per thread": []}
    for _ in range(3):
        results["one shared Client"].append(run([shared]))
        results["one Client per thread"].append(run(own))
    print(f"{threads} threads x {per_thread} lockstep gets, median of 3 runs:")
    for name, rates in results.items():
        print(f"  {name:24s} {statistics.median(rates):9.0f} requests/s")
    for table in [shared, *own]:
        table.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="lockstep requests per variant")
    parser.add_argument("--blocks", type=int, default=20, help="alternating blocks they are split into")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--per-thread", type=int, default=1000, help="gets per thread in the throughput part")
    args = parser.parse_args()
    server = ServerProcess()
    try:
        latency(server.node, args.requests, args.blocks)
        throughput(server.node, args.threads, args.per_thread)
    finally:
        server.kill()


if __name__ == "__main__":
    main()
