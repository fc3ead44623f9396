"""Memory per key of the server's table, measured, against the table's own estimate.

    python3 bench/memory_per_key.py                         # this tree
    python3 bench/memory_per_key.py --baseline /tmp/old     # and another tree (``git archive``), side by side

Fills a :class:`server.store.Store` with ``--keys`` keys (16-byte keys,
``--value-bytes`` values, the way ``set`` stores them), then deletes them
all; each phase is measured twice: Python's allocations (tracemalloc, exact)
and the process's resident memory (RSS, what ``--max-memory`` is about),
both per key, next to ``Store.memory_bytes`` per key (the estimate the memory
cap counts). The figures include 8 bytes per key of the list of names kept
to delete them. A tree without tombstones frees everything on delete (the
deleted RSS stays: freed memory goes back to the allocator, not the system).
Each tree runs in a subprocess of its own, so their imports and heaps do not
mix.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _measure(keys: int, value_bytes: int, traced: bool) -> dict[str, float]:
    """Per-key bytes after filling and after deleting, in this process (whose ``server`` is the tree's).

    ``traced``: Python's allocations by tracemalloc; else RSS, in a process
    without tracemalloc (whose own bookkeeping would show in it).
    """
    import gc
    import tracemalloc

    from server.handler import rss_bytes
    from server.store import Store

    gc.disable()
    kind = "traced" if traced else "rss"
    store = Store()
    names: list[str] = []

    def measure() -> int:
        return tracemalloc.get_traced_memory()[0] if traced else rss_bytes()

    if traced:
        tracemalloc.start()
    base = measure()
    for i in range(keys):  # new key and value objects, as decoding requests makes them
        name = f"key:{i:012d}"
        names.append(name)
        store.set(name, "v" * value_bytes)
    figures = {f"live_{kind}": (measure() - base) / keys, "live_estimate": store.memory_bytes / keys}
    for name in names:
        store.delete(name)
    figures |= {f"deleted_{kind}": (measure() - base) / keys, "deleted_estimate": store.memory_bytes / keys}
    return figures


def run_tree(tree: Path, keys: int, value_bytes: int) -> dict[str, float]:
    """:func:`_measure`, both ways, in processes of their own that import ``tree``'s server."""
    figures: dict[str, float] = {}
    for kind in ("traced", "rss"):
        out = subprocess.run([sys.executable, __file__, "--measure", kind, "--keys", str(keys), "--value-bytes",
                              str(value_bytes)], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                             capture_output=True, text=True, check=True)
        figures |= json.loads(out.stdout)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--value-bytes", type=int, default=32)
    parser.add_argument("--baseline", type=Path, help="another source tree, measured the same way")
    parser.add_argument("--measure", choices=("traced", "rss"), help=argparse.SUPPRESS)  # a child process's part
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(args.keys, args.value_bytes, args.measure == "traced")))
        return
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    print(f"{args.keys} keys of 16 bytes, values of {args.value_bytes} bytes; bytes per key")
    print(f"{'tree':<10} {'live: traced':>13} {'RSS':>6} {'estimate':>9} {'deleted: traced':>16} {'RSS':>6} "
          f"{'estimate':>9}")
    for name, tree in trees:
        r = run_tree(tree, args.keys, args.value_bytes)
        print(f"{name:<10} {r['live_traced']:>13.0f} {r['live_rss']:>6.0f} {r['live_estimate']:>9.0f} "
              f"{r['deleted_traced']:>16.0f} {r['deleted_rss']:>6.0f} {r['deleted_estimate']:>9.0f}")


if __name__ == "__main__":
    main()
