"""CPU instructions per request and per loaded entry, counted by valgrind (steady where wall clocks are not).

    python3 bench/instructions.py                          # this tree
    python3 bench/instructions.py --baseline /tmp/old      # and another tree (``git archive``), side by side

Each figure is the difference between two runs of one workload under
``valgrind --tool=cachegrind`` (a large count and a small one, so start-up
cancels out), divided by the difference in count:

* ``set`` / ``get``: requests through ``Handler.handle`` (no sockets), the
  frames built beforehand, a set carrying a request id as the client sends it;
* ``load``: entries through ``Store.load`` (what a restart spends per key
  besides decoding), the building of the entries subtracted;
* ``restart``: the same entries packed in snapshot payloads of 512, decoded
  and loaded as a restart does (``Store.load_payloads``; in a tree without
  it, msgpack's decoding and ``Store.load``), the packing subtracted.

Each on both tables where the tree has the compact one built
(server/_cstore.pyx): the Python ``Store`` and ``CompactStore``.

Needs valgrind (Debian: valgrind). On a machine shared with other work the
counts stay within a fraction of a percent; wall-clock timings do not.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SMALL, LARGE = 1_000, 21_000


def _workload(kind: str, count: int, load: bool, table_name: str) -> None:
    """Run in the child process, whose ``server`` is the tree's."""
    import time

    import msgpack

    from server.handler import Handler
    from server.store import Store

    table: type[Store] = Store
    if table_name == "compact":
        from server._cstore import CompactStore

        table = CompactStore
    if kind in ("set", "get"):
        handler = Handler(table())
        for i in range(1000):
            handler.handle(msgpack.packb(["set", f"k{i}", "v" * 32]))
        frames = [msgpack.packb(["set", f"k{i % 1000}", "v" * 32, {"rid": f"r{i}"}] if kind == "set"
                                else ["get", f"k{i % 1000}"]) for i in range(count)]
        if load:
            for frame in frames:
                handler.handle(frame)
        return
    store = table()
    versioned = "version" in Store.put.__code__.co_varnames  # a tree before versions loads 3-tuples
    if versioned:
        entries: list[tuple[object, ...]] = [(f"key:{i:012d}", "v" * 32, (1_796_000_000_000 + i, 0, "node-a"), None)
                                             for i in range(count)]
    else:
        entries = [(f"key:{i:012d}", "v" * 32, None) for i in range(count)]
    if kind == "restart":
        payloads = [msgpack.packb((entries[start:start + 512], ())) for start in range(0, count, 512)]
        if load and hasattr(store, "load_payloads"):
            store.load_payloads(payloads, time.time(), lambda replies: None)
        elif load:  # the tree before: what its recovery did
            store.load((entry for payload in payloads for entry in msgpack.unpackb(payload)[0]), time.time())
        return
    if load:
        store.load(iter(entries), time.time())  # type: ignore[arg-type]  # either tree's shape


def _instructions(tree: Path, kind: str, count: int, load: bool, table: str) -> int:
    python = os.path.realpath(sys.executable)  # valgrind must start the interpreter, not a shim script
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", python,
               __file__, "--run", kind, str(count), "1" if load else "0", table]
    result = subprocess.run(command, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                            text=True, check=True)
    match = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{result.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def per_item(tree: Path, kind: str, table: str) -> int:
    """Instructions per request (``set``, ``get``) or per loaded entry (``load``, ``restart``) in ``tree``'s
    ``table``."""
    span = _instructions(tree, kind, LARGE, True, table) - _instructions(tree, kind, SMALL, True, table)
    if kind in ("load", "restart"):
        span -= _instructions(tree, kind, LARGE, False, table) - _instructions(tree, kind, SMALL, False, table)
    return span // (LARGE - SMALL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another source tree, counted the same way")
    parser.add_argument("--run", nargs=4, help=argparse.SUPPRESS)  # the child process's part
    args = parser.parse_args()
    if args.run:
        kind, count, load, table = args.run
        _workload(kind, int(count), load == "1", table)
        return
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    print(f"instructions per item ({LARGE:,} minus {SMALL:,} items)")
    for name, tree in trees:
        for table in ["python"] + (["compact"] if list((tree / "server").glob("_cstore*.so")) else []):
            figures = {kind: per_item(tree, kind, table) for kind in ("set", "get", "load", "restart")}
            print(f"{name:<10} {table:<8} set request {figures['set']:>7,}   get request {figures['get']:>7,}   "
                  f"loaded entry {figures['load']:>7,}   entry decoded and loaded {figures['restart']:>7,}")


if __name__ == "__main__":
    main()
