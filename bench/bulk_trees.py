"""This tree's bulk load against another tree's, side by side: ``memlookup NODE --pipe`` of plain set lines.

    python3 bench/bulk_trees.py --before /tmp/old-tree                 # e.g. ``git archive main`` unpacked
    python3 bench/bulk_trees.py --before /tmp/old-tree --pairs 1000000 --rounds 5

Each round loads the same file (``set key:NNNNNNNNNNNN VALUE``: 16-byte
keys, 32-byte values, as ``bench.compare``'s row 4) into a new server of each
tree with that tree's own CLI, in alternating order, so that other load on
the machine falls on both alike. Printed: the medians of the wall time of the
load and of the server's CPU time (from its start), and the median of the
per-round ratio (this tree / before).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compare import write_load_files  # noqa: E402
from bench.server_trees import server_of  # noqa: E402


def _load(tree: Path, words: Path, pairs: int) -> tuple[float, float]:
    """Wall seconds of the load, and the server's CPU seconds."""
    server = server_of(tree)
    try:
        with open(words, "rb") as source:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "client", server.node, "--pipe"], stdin=source, cwd=tree,
                                  capture_output=True, text=True, timeout=600)
            wall_s = time.perf_counter() - started
        if done.returncode != 0 or f"sent: {pairs}," not in done.stderr:
            raise RuntimeError(f"--pipe failed in {tree}: {done.stderr[-500:]}")
        fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    finally:
        server.stop()
    return wall_s, cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other tree (a checkout or an unpacked archive)")
    parser.add_argument("--pairs", type=int, default=1_000_000, help="lines in the file (default 1,000,000)")
    parser.add_argument("--rounds", type=int, default=5, help="loads into each tree (default 5)")
    args = parser.parse_args()
    trees = {"this tree": ROOT, "before": args.before.resolve()}
    found: dict[str, dict[str, list[float]]] = {name: {"wall s": [], "server CPU s": []} for name in trees}
    with tempfile.TemporaryDirectory() as directory:
        words, _ = write_load_files(Path(directory), args.pairs)
        for round_ in range(args.rounds):
            for name in list(trees) if round_ % 2 else list(reversed(trees)):
                wall_s, cpu_s = _load(trees[name], words, args.pairs)
                found[name]["wall s"].append(wall_s)
                found[name]["server CPU s"].append(cpu_s)
    print(f"{args.rounds} rounds of {args.pairs:,} lines into each tree in turn; medians\n")
    print("| figure | this tree | before | this / before (median of rounds) |\n| --- | ---: | ---: | ---: |")
    for figure in ("wall s", "server CPU s"):
        ours, theirs = found["this tree"][figure], found["before"][figure]
        ratio = statistics.median(o / t for o, t in zip(ours, theirs, strict=True))
        print(f"| {figure} | {statistics.median(ours):.2f} | {statistics.median(theirs):.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
