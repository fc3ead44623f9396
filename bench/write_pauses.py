"""The longest writes of the compact table under churn: what compacting its arenas costs one request.

    python3 bench/write_pauses.py                          # this tree
    python3 bench/write_pauses.py --baseline /tmp/old      # and another tree (``git archive``), side by side

Fills :class:`server._cstore.CompactStore` with ``--keys`` keys (16-byte
keys, 32-byte values), then times each of ``--writes`` writes of random
keys with values of 0 to 64 bytes (most move the key's bytes to a new entry,
the old one becomes garbage, and now and then a write compacts an arena) and
a delete for every tenth. Printed per tree: the writes' median, 99.9th
percentile and longest time in µs, the compactions (where the tree's table
counts them), and the median and longest time of the writes that compacted. Each tree runs in a subprocess of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _measure(keys: int, writes: int) -> dict[str, float]:
    """Per-write times in this process (whose ``server`` is the tree's), in µs."""
    import gc

    from server._cstore import CompactStore

    gc.disable()
    store = CompactStore()
    for i in range(keys):
        store.set(f"key:{i:012d}", "v" * 32)
    rng = random.Random(5)
    names = [f"key:{rng.randrange(keys):012d}" for _ in range(writes)]
    values = ["v" * rng.randrange(65) for _ in range(64)]
    clock = time.perf_counter
    times, compacting = [], []
    compactions = getattr(store, "compactions", 0)
    for n, key in enumerate(names):
        start = clock()
        if n % 10 == 9:
            store.delete(key)
        else:
            store.set(key, values[n % 64])
        times.append(clock() - start)
        if getattr(store, "compactions", 0) != compactions:
            compactions = store.compactions
            compacting.append(times[-1])
    times.sort()
    return {"median_us": statistics.median(times) * 1e6, "p999_us": times[int(len(times) * 0.999)] * 1e6,
            "max_us": times[-1] * 1e6, "compactions": getattr(store, "compactions", -1),
            "compacting_median_us": statistics.median(compacting) * 1e6 if compacting else 0.0,
            "compacting_max_us": max(compacting) * 1e6 if compacting else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--writes", type=int, default=2_000_000)
    parser.add_argument("--baseline", type=Path, help="another source tree, measured the same way")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # a child process's part
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(args.keys, args.writes)))
        return
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    print(f"{args.keys} keys, {args.writes} writes of random keys (a tenth deletes); µs a write")
    print(f"{'tree':<10} {'median':>8} {'p99.9':>8} {'longest':>9} {'compactions':>12} {'compacting: median':>19} "
          f"{'longest':>9}")
    for name, tree in trees:
        out = subprocess.run([sys.executable, __file__, "--measure", "--keys", str(args.keys), "--writes",
                              str(args.writes)], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout)
        compactions = "" if r["compactions"] < 0 else f"{r['compactions']:.0f}"
        compacting = (f"{r['compacting_median_us']:>19.1f} {r['compacting_max_us']:>9.1f}" if r["compactions"] > 0
                      else f"{'':>19} {'':>9}")
        print(f"{name:<10} {r['median_us']:>8.2f} {r['p999_us']:>8.2f} {r['max_us']:>9.1f} {compactions:>12} "
              f"{compacting}")


if __name__ == "__main__":
    main()
