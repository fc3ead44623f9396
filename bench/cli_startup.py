"""How long a one-shot ``memlookup NODE get KEY`` takes, and where its parse time goes.

    python3 bench/cli_startup.py                          # this tree
    python3 bench/cli_startup.py --baseline /tmp/old-tree # and another, side by side
    python3 bench/cli_startup.py --parse                  # plain and lean parses against the whole parser
    python3 bench/cli_startup.py --inside --baseline T    # import and main() timed inside the process

Wall time of the real CLI in a subprocess against a real server (started from
this tree), runs of the trees interleaved so that the machine's load falls on
both alike; the median and quartiles are printed, then the CPU time of the
same runs (user + system, of the child: less swayed by other jobs than the
wall time), and each tree's ``get`` as a multiple of ``python -c "import zmq,
msgpack"``, the floor. Bytecode is compiled first, as an installed package
has it. ``--parse`` times, in fresh processes, the CLI's parse of a ``get``
without argparse (``plain_args``), with only that command's parser
(``parse_args``, argparse's import included) and with the whole parser.
``--inside`` times, in fresh processes, the import of ``client.cli`` (zmq and
msgpack already imported) and its ``main()`` for a ``get``: what the CLI adds
to the floor, without the interpreter's start and exit.

The connection-refused report is timed the same way: ``get`` against a port
nothing listens on, with ``--timeout 2 --retries 2`` (6 s if it were waited out).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client import Client  # noqa: E402
from tests.servers import ServerProcess, free_port  # noqa: E402

_PARSE = """
import time
t0 = time.perf_counter()
from client.cli_parser import build_parser, parse_args, plain_args
t1 = time.perf_counter()
{call}
t2 = time.perf_counter()
print((t1 - t0) * 1e3, (t2 - t1) * 1e3)
"""


_INSIDE = """
import contextlib, io, time
import zmq, msgpack
t0 = time.perf_counter()
import client.cli
t1 = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    client.cli.main({argv!r})
t2 = time.perf_counter()
print((t1 - t0) * 1e3, (t2 - t1) * 1e3)
"""

_FLOOR = "python -c 'import zmq, msgpack'"


def _quartiles(samples: list[float]) -> str:
    q1, median, q3 = statistics.quantiles(samples, n=4)
    return f"median {median:7.1f} ms  (quartiles {q1:.1f} - {q3:.1f}, {len(samples)} runs)"


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_ms(command: list[str], cwd: Path) -> tuple[float, float]:
    """The wall time and the CPU time of one run of ``command``, in ms."""
    cpu_before, started = _child_cpu_s(), time.perf_counter()
    subprocess.run(command, cwd=cwd, capture_output=True, check=False)
    return (time.perf_counter() - started) * 1e3, (_child_cpu_s() - cpu_before) * 1e3


@contextlib.contextmanager
def _serving(trees: dict[str, Path]) -> Iterator[ServerProcess]:
    """A server (of this tree) holding norway, the trees' bytecode compiled."""
    for tree in trees.values():
        subprocess.run([sys.executable, "-m", "compileall", "-q", "client", "common"], cwd=tree, check=True)
    server = ServerProcess()
    try:
        with Client(server.node) as table:
            table.set("norway", "oslo")
        yield server
    finally:
        server.stop()


def bench_get(runs: int, trees: dict[str, Path]) -> None:
    with _serving(trees) as server:
        refused = f"127.0.0.1:{free_port()}"
        commands = {
            f"get, {name}": ([sys.executable, "-m", "client", server.node, "get", "norway"], tree)
            for name, tree in trees.items()
        }
        commands |= {
            f"refused, {name}": ([sys.executable, "-m", "client", "--timeout", "2", "--retries", "2", refused,
                                  "get", "norway"], tree)
            for name, tree in trees.items()
        }
        commands[_FLOOR] = ([sys.executable, "-c", "import zmq, msgpack"], ROOT)
        wall: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, (command, cwd) in commands.items():
                wall_ms, cpu_ms = _run_ms(command, cwd)
                wall[name].append(wall_ms)
                cpu[name].append(cpu_ms)
    for kind, samples in (("wall", wall), ("cpu", cpu)):
        print(f"{kind} time:")
        for name, values in samples.items():
            print(f"  {name:34s} {_quartiles(values)}")
    for label in trees:
        print(f"get, {label}, against the floor: " + ", ".join(
            f"{kind} {statistics.median(samples[f'get, {label}']) / statistics.median(samples[_FLOOR]):.2f}x"
            for kind, samples in (("wall", wall), ("cpu", cpu))))


def bench_inside(runs: int, trees: dict[str, Path]) -> None:
    with _serving(trees) as server:
        script = _INSIDE.format(argv=[server.node, "get", "norway"])
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
        for _ in range(runs):
            for name, tree in trees.items():
                out = subprocess.run([sys.executable, "-c", script], cwd=tree, capture_output=True, text=True,
                                     check=True).stdout.split()
                samples[name].append((float(out[0]), float(out[1])))
    for name, pairs in samples.items():
        for part, values in (("import client.cli", [p[0] for p in pairs]), ("main()", [p[1] for p in pairs]),
                             ("both", [p[0] + p[1] for p in pairs])):
            print(f"inside, {name}, {part:17s} least {min(values):5.1f} ms, {_quartiles(values)}")


def bench_parse(runs: int) -> None:
    argv = ["127.0.0.1", "get", "norway"]
    calls = {"plain (plain_args, no argparse)": f"plain_args({argv!r})", "lean (parse_args)": f"parse_args({argv!r})",
             "whole parser": f"build_parser().parse_args({argv!r})"}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            out = subprocess.run([sys.executable, "-c", _PARSE.format(call=call)], cwd=ROOT, capture_output=True,
                                 text=True, check=True).stdout.split()
            samples[name].append(float(out[1]))
    for name, values in samples.items():
        print(f"parse, {name:32s} {_quartiles(values)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of each command (default: 30)")
    parser.add_argument("--baseline", type=Path, metavar="TREE", help="another source tree to time side by side")
    parser.add_argument("--parse", action="store_true", help="time the plain and lean parses against the whole parser")
    parser.add_argument("--inside", action="store_true",
                        help="time, inside fresh processes, importing client.cli after zmq and msgpack, and main()")
    args = parser.parse_args()
    trees = {"this tree": ROOT, **({"baseline": args.baseline} if args.baseline else {})}
    if args.parse:
        bench_parse(args.runs)
    elif args.inside:
        bench_inside(args.runs, trees)
    else:
        bench_get(args.runs, trees)
    return 0


if __name__ == "__main__":
    sys.exit(main())
