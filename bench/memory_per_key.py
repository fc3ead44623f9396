"""Memory per key of the server's table, measured, against the table's own estimate.

    python3 bench/memory_per_key.py                         # this tree
    python3 bench/memory_per_key.py --baseline /tmp/old     # and another tree (``git archive``), side by side
    python3 bench/memory_per_key.py --only compact          # one table

Fills each table (:class:`server.store.Store`, and the compact table of
server/_cstore.pyx where the tree has it built) with ``--keys`` keys
(16-byte keys, ``--value-bytes`` values, the way ``set`` stores them), then
rewrites every key ``--churn-rounds`` times in a scattered order, with
values 8 bytes shorter and longer by turns (each rewrite moves the compact
table's entry: the garbage its compaction has to bound), then deletes them
all; each phase is measured twice: Python's allocations
(tracemalloc, exact; blank for the compact table, whose C allocations it
does not see) and the process's resident memory (RSS, what ``--max-memory``
is about), both per key, next to the table's ``memory_bytes`` per key (the
figure the memory cap counts: an estimate for Store, the allocations for the
compact table). The deletes name the keys anew (no list of names is kept,
which would count in the compact table's RSS). A tree without tombstones frees everything on delete (the
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


#: Rewrites visit key ``(i * STRIDE + round) % keys``: a scattered order with no list of names kept.
STRIDE = 999_983  # a prime, so coprime with any count of keys it does not divide


def _measure(keys: int, value_bytes: int, churn_rounds: int, traced: bool, table: str) -> dict[str, float]:
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
    if table == "compact":
        from server._cstore import CompactStore

        store: Store = CompactStore()
    else:
        store = Store()
    def measure() -> int:
        return tracemalloc.get_traced_memory()[0] if traced else rss_bytes()

    if traced:
        tracemalloc.start()
    base = measure()
    for i in range(keys):  # new key and value objects, as decoding requests makes them
        store.set(f"key:{i:012d}", "v" * value_bytes)
    figures = {f"live_{kind}": (measure() - base) / keys, "live_estimate": store.memory_bytes / keys}
    for turn in range(churn_rounds):
        value = "v" * (value_bytes + (8 if turn % 2 else -8))
        for i in range(keys):
            store.set(f"key:{(i * STRIDE + turn) % keys:012d}", value)
    if churn_rounds:
        figures |= {f"churned_{kind}": (measure() - base) / keys, "churned_estimate": store.memory_bytes / keys}
    for i in range(keys):
        store.delete(f"key:{i:012d}")
    figures |= {f"deleted_{kind}": (measure() - base) / keys, "deleted_estimate": store.memory_bytes / keys}
    return figures


def run_tree(tree: Path, keys: int, value_bytes: int, churn_rounds: int, table: str) -> dict[str, float]:
    """:func:`_measure`, both ways, in processes of their own that import ``tree``'s server."""
    figures: dict[str, float] = {}
    for kind in ("traced", "rss"):
        out = subprocess.run([sys.executable, __file__, "--measure", kind, "--table", table, "--keys", str(keys),
                              "--value-bytes", str(value_bytes), "--churn-rounds", str(churn_rounds)], cwd=tree,
                             env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True)
        figures |= json.loads(out.stdout)
    return figures


def tables(tree: Path) -> list[str]:
    """The tables ``tree`` has: the Python one, and the compact one where it is built."""
    return ["python"] + (["compact"] if list((tree / "server").glob("_cstore*.so")) else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--value-bytes", type=int, default=32)
    parser.add_argument("--churn-rounds", type=int, default=4, help="rewrites of every key between fill and deletes")
    parser.add_argument("--baseline", type=Path, help="another source tree, measured the same way")
    parser.add_argument("--only", choices=("python", "compact"), help="measure this table only")
    parser.add_argument("--measure", choices=("traced", "rss"), help=argparse.SUPPRESS)  # a child process's part
    parser.add_argument("--table", choices=("python", "compact"), help=argparse.SUPPRESS)  # the child's table
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(args.keys, args.value_bytes, args.churn_rounds, args.measure == "traced",
                                 args.table)))
        return
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    print(f"{args.keys} keys of 16 bytes, values of {args.value_bytes} bytes; bytes per key")
    print(f"{'tree':<10} {'table':<8} {'live: traced':>13} {'RSS':>6} {'counted':>8} {'churned: traced':>16} "
          f"{'RSS':>6} {'counted':>8} {'deleted: traced':>16} {'RSS':>6} {'counted':>8}")
    for name, tree in trees:
        for table in tables(tree):
            if args.only and table != args.only:
                continue
            r = run_tree(tree, args.keys, args.value_bytes, args.churn_rounds, table)
            columns = [f"{name:<10} {table:<8}"]
            for phase in ("live", "churned", "deleted"):
                traced = f"{r[f'{phase}_traced']:.0f}" if table == "python" and f"{phase}_traced" in r else ""
                rss = f"{r[f'{phase}_rss']:.0f}" if f"{phase}_rss" in r else ""
                counted = f"{r[f'{phase}_estimate']:.0f}" if f"{phase}_estimate" in r else ""
                columns.append(f"{traced:>{13 if phase == 'live' else 16}} {rss:>6} {counted:>8}")
            print(" ".join(columns))


if __name__ == "__main__":
    main()
