"""What a ClusterClient call costs in lockstep, this tree against another revision's (servers and client alike).

    python3 bench/cluster_latency.py --against main [--requests 4000] [--blocks 20]
    python3 bench/cluster_latency.py --before /tmp/old-tree      # a tree unpacked already

For each tree (this one, and ``git archive REV`` of ``--against``, or the
directory ``--before``): three
in-memory servers of that tree on loopback and one child process holding
that tree's ``ClusterClient`` (R=2), 1000 keys of 32 bytes filled first.
The children take turns, block by block, so that other load on the machine
falls on every tree alike; each call is timed from call to return and the
median and 99th percentile are printed, per call:

* ``get``, ``set``, ``delete`` (of a key set just before, untimed), ``incr``,
  ``mget`` of 100 keys;
* ``get, stale owner``: ``get`` of a key that one of its owners was just
  given a different value of directly (untimed): the owners disagree, and
  the cluster client answers with the newer record and repairs the other one
  (a tree without read-repair answers with its first owner's value).
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

from bench.client_latency import _percentile, _tree_of  # noqa: E402
from tests.servers import ServerProcess  # noqa: E402

CALLS = ("get", "set", "delete", "incr", "mget 100", "get, stale owner")

#: The child (run in its tree): reads "BLOCK<tab>call<tab>n" lines, answers each with the n latencies (seconds) as JSON.
_CHILD = r'''
import json, random, sys, time
from client import Client, ClusterClient
nodes = sys.argv[1:]
perf = time.perf_counter
rng = random.Random(1)
keys = [f"key:{i}" for i in range(1000)]
with ClusterClient(nodes, replicas=2, timeout_s=5, retries=0) as table:
    direct = {node: Client(node, timeout_s=5, retries=0) for node in nodes}
    table.mset(dict.fromkeys(keys, "v" * 32))
    for key in keys[:200]:
        table.get(key)
    print("ready", flush=True)
    for line in sys.stdin:
        _, call, count = line.rstrip("\n").split("\t")
        samples = []
        for n in range(int(count)):
            key = rng.choice(keys)
            if call == "delete":
                table.set(key, "v" * 32)
            elif call == "get, stale owner":
                direct[table.owners(key)[-1]].set(key, f"direct {n}")
            started = perf()
            if call in ("get", "get, stale owner"):
                table.get(key)
            elif call == "set":
                table.set(key, "v" * 32)
            elif call == "delete":
                table.delete(key)
            elif call == "incr":
                table.incr("counter:" + key)
            else:
                table.mget(rng.sample(keys, 100))
            samples.append(perf() - started)
        print(json.dumps(samples), flush=True)
    for client in direct.values():
        client.close()
'''

#: A server of another tree: its packages first on the path (``-m server`` would find this tree's).
_SERVER = "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); runpy.run_module('server', run_name='__main__')"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    before = parser.add_mutually_exclusive_group(required=True)
    before.add_argument("--against", metavar="REV", help="the revision to compare with")
    before.add_argument("--before", metavar="DIR", type=Path, help="the tree to compare with")
    parser.add_argument("--requests", type=int, default=4000, help="lockstep calls per call kind and tree")
    parser.add_argument("--blocks", type=int, default=20, help="alternating blocks they are split into")
    args = parser.parse_args()
    servers: list[ServerProcess] = []
    children: dict[str, subprocess.Popen[str]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="memlookup-bench-") as scratch:
            trees = {"this tree": ROOT,
                     args.against or str(args.before): args.before or _tree_of(args.against, scratch)}
            for name, tree in trees.items():
                program = [sys.executable, "-c", _SERVER, str(tree)]
                nodes = [ServerProcess(program=program) for _ in range(3)]
                servers += nodes
                children[name] = subprocess.Popen([sys.executable, "-c", _CHILD, *(s.node for s in nodes)],
                                                  cwd=tree, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            for child in children.values():
                assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            per_block = max(1, args.requests // args.blocks)
            samples: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.blocks):
                for call in CALLS:
                    for name, child in children.items():  # one at a time: they never compete
                        assert child.stdin is not None and child.stdout is not None
                        child.stdin.write(f"BLOCK\t{call}\t{per_block}\n")
                        child.stdin.flush()
                        samples.setdefault((call, name), []).extend(json.loads(child.stdout.readline()))
    finally:
        for child in children.values():
            if child.stdin is not None:
                child.stdin.close()
            child.wait(30)
        for server in servers:
            server.kill()
    print(f"ClusterClient, 3 nodes, R=2, lockstep, {per_block * args.blocks} calls each in {args.blocks} "
          f"alternating blocks: median / p99 in us")
    print(f"  {'call':18s}" + "".join(f"{name:>24s}" for name in children))
    for call in CALLS:
        cells = [f"{statistics.median(values) * 1e6:8.0f} / {_percentile(values, 0.99) * 1e6:6.0f}"
                 for values in (samples[(call, name)] for name in children)]
        print(f"  {call:18s}" + "".join(f"{cell:>24s}" for cell in cells))


if __name__ == "__main__":
    main()
