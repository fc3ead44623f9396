"""What serving Prometheus metrics costs the server: the same load with and without --metrics-port.

    python3 bench/metrics_overhead.py [--clients 3] [--seconds 3] [--rounds 5]

Two in-memory servers on loopback, one started with ``--metrics-port``,
which is scraped once a second during its runs (Prometheus' default is
every 15 s, so this is harsher). ``--clients`` processes send single-key
``get``/``set`` requests for ``--seconds``; the two servers take turns,
``--rounds`` times, and the medians are compared.

On a shared 2-core machine that end-to-end comparison is noisy, so the
script first measures the only per-batch work metrics add, in process: one
``perf_counter`` call and ``BatchLatency.observe``, against the handler's
own cost for one ``get`` request.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
import statistics
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import load
from client import Client
from tests.servers import ServerProcess


def worker(node: str, seconds: float, seed: int, out: multiprocessing.Queue[int]) -> None:
    rng = random.Random(seed)
    done = 0
    with Client(node, timeout_s=5.0, retries=0) as table:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            key = f"key:{rng.randrange(10_000)}"
            if done % 4:
                table.get(key)
            else:
                table.set(key, "v" * 32)
            done += 1
    out.put(done)


def micro() -> None:
    """The added per-batch cost against one request's handling, in process."""
    import timeit

    from common.protocol import encode_request
    from server.handler import Handler
    from server.metrics import BatchLatency
    from server.store import Store

    latency = BatchLatency()
    handler = Handler(Store())
    handler.handle(encode_request("set", "key:1", "v" * 32))
    frame = encode_request("get", "key:1")
    clock = time.perf_counter
    n = 200_000
    added = min(timeit.repeat(lambda: latency.observe(1, clock() - clock()), number=n, repeat=5)) / n
    handled = min(timeit.repeat(lambda: handler.handle(frame), number=n, repeat=5)) / n
    print(f"in process: metrics add {added * 1e6:.2f} us per batch; Handler.handle(get) takes "
          f"{handled * 1e6:.2f} us per request ({added / handled:.1%} of one request, less per request "
          f"in batches of several)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    micro()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    plain = ServerProcess()
    metered = ServerProcess(["--metrics-port", str(port)])
    rates: dict[str, list[float]] = {"without metrics": [], "with metrics": []}
    try:
        for _ in range(args.rounds):
            rates["without metrics"].append(load.rate(worker, (plain.node, args.seconds), args.clients, args.seconds))
            stop = threading.Event()

            def scrape(stop: threading.Event) -> None:
                while not stop.wait(1.0):
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()

            scraper = threading.Thread(target=scrape, args=(stop,))
            scraper.start()
            rates["with metrics"].append(load.rate(worker, (metered.node, args.seconds), args.clients, args.seconds))
            stop.set()
            scraper.join()
    finally:
        plain.kill()
        metered.kill()
    base = statistics.median(rates["without metrics"])
    print(f"{args.clients} clients, 75% get / 25% set, {args.seconds:g} s x {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs; median requests/s")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:16} {median:10.0f}  ({median / base:.3f}x)  runs: {', '.join(f'{v:.0f}' for v in values)}")


if __name__ == "__main__":
    main()
