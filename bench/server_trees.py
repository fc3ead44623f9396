"""This tree's server against another tree's, side by side: what a server change costs on the hot paths.

    python3 bench/server_trees.py --before /tmp/old-tree            # e.g. ``git archive main`` unpacked
    python3 bench/server_trees.py --before /tmp/old-tree --rounds 20

Both servers run at once (``python -m server`` of each tree, in memory, on
free loopback ports, prefilled alike), and this tree's load generator
(``python -m bench``) takes turns against them, round by round and in
alternating order, so that other load on the machine falls on both alike:

* lockstep ``get`` and ``set``: one client, one request at a time (32-byte
  values, 1000 keys); the p50 latency in µs;
* pipelined: 2 client processes, 64 requests in flight each, 16 to a
  ``batch`` message, ``get=50,set=50``; requests per second.

Printed: each figure's median over the rounds, and the median of the
per-round ratio (this tree / before), the steadier figure on a shared host.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import ServerProcess  # noqa: E402

#: name -> (arguments of ``python -m bench``, the figure taken from its JSON, unit)
LOADS: dict[str, tuple[list[str], str, str]] = {
    "lockstep get p50": (["-c", "1", "-n", "4000", "-r", "1000", "--mix", "get"], "p50", "µs"),
    "lockstep set p50": (["-c", "1", "-n", "4000", "-r", "1000", "--mix", "set"], "p50", "µs"),
    "pipelined req/s": (["-c", "2", "-P", "64", "-m", "16", "--duration", "3", "-r", "1000"], "rate", "req/s"),
}


def server_of(tree: Path) -> ServerProcess:
    """A server of ``tree`` (its own modules first on the path), in memory, on a free port."""
    program = [sys.executable, "-c",
               f"import sys; sys.path.insert(0, {str(tree)!r}); from server.__main__ import main; sys.exit(main())"]
    return ServerProcess([], program=program)


def _run(node: str, args: list[str], figure: str) -> float:
    out = subprocess.run([sys.executable, "-m", "bench", node, *args, "--json", "-q"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=300).stdout
    result = json.loads(out)
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} errors against {node}")
    return float(result["requests_per_s"] if figure == "rate" else result["latency_us"][figure])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other tree (a checkout or an unpacked archive)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of every load against both (default 10)")
    args = parser.parse_args()
    trees = {"this tree": ROOT, "before": args.before.resolve()}
    servers = {name: server_of(tree) for name, tree in trees.items()}
    try:
        for server in servers.values():
            _run(server.node, ["-c", "1", "-n", "1000", "-r", "1000", "--mix", "set", "--prefill"], "p50")
        found: dict[str, dict[str, list[float]]] = {load: {name: [] for name in trees} for load in LOADS}
        for round_ in range(args.rounds):
            order = list(servers) if round_ % 2 else list(reversed(servers))
            for load, (load_args, figure, _) in LOADS.items():
                for name in order:
                    found[load][name].append(_run(servers[name].node, load_args, figure))
    finally:
        for server in servers.values():
            server.stop()
    print(f"{args.rounds} rounds, each load against both servers in turn; medians\n")
    print("| load | this tree | before | this / before (median of rounds) |\n| --- | ---: | ---: | ---: |")
    for load, (_, _, unit) in LOADS.items():
        ours, theirs = found[load]["this tree"], found[load]["before"]
        ratio = statistics.median(o / t for o, t in zip(ours, theirs, strict=True))
        print(f"| {load} | {statistics.median(ours):,.1f} {unit} | {statistics.median(theirs):,.1f} {unit} | "
              f"{ratio:.3f} |")


if __name__ == "__main__":
    main()
