"""What a call costs through each client: lockstep latency, and throughput with many callers.

    python3 bench/client_latency.py [--against REV] [--requests 20000] [--blocks 20] [--callers 16]

One in-memory server on loopback. Latency: ``get`` in lockstep through
``Client`` and through ``AsyncClient`` (one task), and with ``--against``
through the ``Client`` of another revision of this repository (``git
archive REV``: what the same call cost before a change). Each runs in a child
process of its own, all against the same server, in alternating blocks (so
that the machine's moods fall on every variant alike); each request is timed
from call to return, and the medians and 99th percentiles are printed.

In process: the client's own work per call (checking, framing, the pool,
reading the reply) with a transport that answers at once, no socket: the
part a change to the client can make slower, without the round trip's noise.
Every tree's Client in one process, alternating; the minimum of 15 runs of
50,000 calls each.

Throughput: ``--callers`` asyncio tasks sharing one ``AsyncClient``, and as
many threads sharing one ``Client``, each sending ``get`` in lockstep; and
a ``Pipeline`` and an ``AsyncPipeline`` of 20,000 ``get``s (window 256), one
command a message and 16.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import ServerProcess  # noqa: E402

#: The child: reads "BLOCK n" lines, answers each with the n latencies (seconds) as JSON.
_CHILD = r'''
import asyncio, json, sys, time
kind, node = sys.argv[1], sys.argv[2]
perf = time.perf_counter
if kind == "async":
    from client import AsyncClient

    async def main():
        async with AsyncClient(node, timeout_s=5, retries=0) as table:
            await table.set("key", "v" * 32)
            for _ in range(200):
                await table.get("key")
            print("ready", flush=True)
            for line in sys.stdin:
                samples = []
                for _ in range(int(line.split()[1])):
                    started = perf()
                    await table.get("key")
                    samples.append(perf() - started)
                print(json.dumps(samples), flush=True)

    asyncio.run(main())
else:
    from client import Client

    with Client(node, timeout_s=5, retries=0) as table:
        table.set("key", "v" * 32)
        for _ in range(200):
            table.get("key")
        print("ready", flush=True)
        for line in sys.stdin:
            samples = []
            for _ in range(int(line.split()[1])):
                started = perf()
                table.get("key")
                samples.append(perf() - started)
            print(json.dumps(samples), flush=True)
'''

_THROUGHPUT = r'''
import asyncio, sys, threading, time
kind, node, callers, per_caller = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if kind == "async":
    from client import AsyncClient

    async def main():
        async with AsyncClient(node, timeout_s=5, retries=0) as table:
            await asyncio.gather(*(table.ping() for _ in range(callers)))  # one connection per task

            async def work():
                for _ in range(per_caller):
                    await table.get("key")

            started = time.perf_counter()
            await asyncio.gather(*(work() for _ in range(callers)))
            print(callers * per_caller / (time.perf_counter() - started))

    asyncio.run(main())
else:
    from client import Client

    with Client(node, timeout_s=5, retries=0) as table:
        def work():
            for _ in range(per_caller):
                table.get("key")

        threads = [threading.Thread(target=work) for _ in range(callers)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(callers * per_caller / (time.perf_counter() - started))
'''


#: The client's own work per call, for each tree given (argv: name=path ...), all in
#: this one process: each tree's ``client`` package is imported in turn under its
#: own name, and its Client's transports are replaced by one that answers at once.
_IN_PROCESS = r'''
import importlib, json, sys, timeit

class Instant:
    def request(self, frame, retry=True):
        return b"\x92\x00\xc3"  # [0, true]: a success

    def close(self):
        pass

tables = {}
for spec in sys.argv[1:]:
    name, path = spec.split("=", 1)
    for module in [m for m in sys.modules if m.split(".")[0] in ("client", "common")]:
        del sys.modules[module]  # the next tree's packages are imported afresh
    sys.path.insert(0, path)
    table = importlib.import_module("client").Client("127.0.0.1:1")
    table._transports = importlib.import_module("client.pool").Pool(Instant)
    sys.path.remove(path)
    tables[name] = table
best = {}
for _ in range(15):
    for name, table in tables.items():
        calls = {"get": lambda: table.get("key"), "set": lambda: table.set("key", "value"),
                 "set ttl_s": lambda: table.set("key", "value", ttl_s=5)}
        for call, run in calls.items():
            seconds = timeit.timeit(run, number=50_000) / 50_000
            best.setdefault(name, {})[call] = min(best.get(name, {}).get(call, 1.0), seconds)
print(json.dumps(best))
'''


_PIPELINED = r'''
import asyncio, json, sys, time
from client import AsyncClient, Client
node = sys.argv[1]

def rate(run):
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        run()
        rates.append(20_000 / (time.perf_counter() - started))
    return sorted(rates)[1]

found = {}
with Client(node, timeout_s=5, retries=0) as table:
    for per_message in (1, 16):
        def run():
            pipeline = table.pipeline(window=256, per_message=per_message)
            for _ in range(20_000):
                pipeline.get("key")
            pipeline.execute()
        found[f"Pipeline, {per_message} a message"] = rate(run)

async def main():
    async with AsyncClient(node, timeout_s=5, retries=0) as table:
        for per_message in (1, 16):
            rates = []
            for _ in range(3):
                started = time.perf_counter()  # queueing included, as for the Pipeline
                pipeline = table.pipeline(window=256, per_message=per_message)
                for _ in range(20_000):
                    pipeline.get("key")
                await pipeline.execute()
                rates.append(20_000 / (time.perf_counter() - started))
            found[f"AsyncPipeline, {per_message} a message"] = sorted(rates)[1]

asyncio.run(main())
print(json.dumps(found))
'''


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _tree_of(revision: str, into: str) -> Path:
    """A copy of the repository at ``revision`` (``git archive``)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    return Path(into)


def latency(node: str, trees: dict[str, tuple[str, Path]], requests: int, blocks: int) -> None:
    children = {
        name: subprocess.Popen([sys.executable, "-c", _CHILD, kind, node], cwd=tree, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for name, (kind, tree) in trees.items()
    }
    try:
        for child in children.values():
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        per_block = max(1, requests // blocks)
        samples: dict[str, list[float]] = {name: [] for name in children}
        for _ in range(blocks):
            for name, child in children.items():  # one at a time: they never compete
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write(f"BLOCK {per_block}\n")
                child.stdin.flush()
                samples[name].extend(json.loads(child.stdout.readline()))
    finally:
        for child in children.values():
            if child.stdin is not None:
                child.stdin.close()
            child.wait(30)
    print(f"lockstep get latency, {per_block * blocks} requests each, {blocks} alternating blocks:")
    for name, values in samples.items():
        print(f"  {name:40s} median {statistics.median(values) * 1e6:7.1f} us   "
              f"p99 {_percentile(values, 0.99) * 1e6:7.1f} us")


def in_process(trees: dict[str, tuple[str, Path]]) -> None:
    specs = [f"{name}={tree}" for name, (_, tree) in trees.items()]
    best = json.loads(subprocess.run([sys.executable, "-c", _IN_PROCESS, *specs], cwd=ROOT, check=True,
                                     capture_output=True, text=True).stdout)
    print("in process, the client's own work per call (min of 15 alternating runs of 50,000 calls):")
    for name, figures in best.items():
        print(f"  {name:40s} " + "   ".join(f"{call} {seconds * 1e6:.2f} us" for call, seconds in figures.items()))


def throughput(node: str, callers: int, per_caller: int, runs: int = 3) -> None:
    print(f"{callers} callers x {per_caller} lockstep gets, median of {runs} runs:")
    for kind, name in (("async", "one AsyncClient, tasks"), ("sync", "one Client, threads")):
        rates = [float(subprocess.run([sys.executable, "-c", _THROUGHPUT, kind, node, str(callers), str(per_caller)],
                                      cwd=ROOT, check=True, capture_output=True, text=True).stdout)
                 for _ in range(runs)]
        print(f"  {name:24s} {statistics.median(rates):9.0f} requests/s")


def pipelined(node: str) -> None:
    found = json.loads(subprocess.run([sys.executable, "-c", _PIPELINED, node], cwd=ROOT, check=True,
                                      capture_output=True, text=True).stdout)
    print("a pipeline of 20,000 gets, window 256, median of 3 runs:")
    for name, rate in found.items():
        print(f"  {name:32s} {rate:9.0f} requests/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", metavar="REV", help="also time the Client of this git revision")
    parser.add_argument("--requests", type=int, default=20_000, help="lockstep requests per variant")
    parser.add_argument("--blocks", type=int, default=20, help="alternating blocks they are split into")
    parser.add_argument("--callers", type=int, default=16, help="tasks, and threads, in the throughput part")
    parser.add_argument("--per-caller", type=int, default=1000, help="gets per task or thread")
    args = parser.parse_args()
    server = ServerProcess()
    try:
        with tempfile.TemporaryDirectory(prefix="memlookup-bench-") as scratch:
            trees: dict[str, tuple[str, Path]] = {"Client (this tree)": ("sync", ROOT)}
            if args.against:
                trees[f"Client ({args.against})"] = ("sync", _tree_of(args.against, scratch))
            trees["AsyncClient (this tree)"] = ("async", ROOT)
            latency(server.node, trees, args.requests, args.blocks)
            in_process({name: kind_tree for name, kind_tree in trees.items() if kind_tree[0] == "sync"})
        throughput(server.node, args.callers, args.per_caller)
        pipelined(server.node)
    finally:
        server.kill()


if __name__ == "__main__":
    main()
