"""``python -m bench`` / ``memlookup-benchmark``: a redis-benchmark-style load generator.

Client processes (``-c``) each open their own connection and send requests
drawn from an operation mix over a keyspace, either in lockstep (``-P 1``: send,
wait for the reply, send the next) or with ``-P`` requests in flight. Each
request is timed from send to reply. The run ends after ``-n`` requests in all
or after ``--duration`` seconds, then prints requests per second and latency
percentiles (``--json`` for machines). A progress bar shows on a terminal.

``--target redis`` runs the same workload against a Redis server through
redis-py, for side-by-side comparisons (``bench/compare.py``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import threading
import time
from array import array
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bench.drivers import DRIVERS, OPS, Request
from client.cli_parser import positive_float

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.sharedctypes import Synchronized
    from multiprocessing.synchronize import Barrier

#: What a worker reports: (index, requests, refused, latencies as array("d")
#: bytes, seconds, the error that ended it or None).
Report = tuple[int, int, int, bytes, float, str | None]

#: Requests a worker does between progress reports.
REPORT_EVERY = 256

#: (status, meaning), for the man page.
EXIT_STATUS: tuple[tuple[int, str], ...] = (
    (0, "the run finished; its figures are printed"),
    (1, "the run failed (no reply within --timeout, or the server refused requests)"),
    (2, "bad usage"),
)

#: (command line, what it does), for the man page.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("memlookup-benchmark 127.0.0.1:7400", "4 clients in lockstep, get=50,set=50, 100000 requests"),
    ("memlookup-benchmark -c 2 -P 64 -m 16 --duration 10", "64 requests in flight per client, 16 to a message"),
    ("memlookup-benchmark --target redis 127.0.0.1:6379", "the same load against Redis"),
)


def _mix(text: str) -> dict[str, float]:
    """``get=80,set=20`` -> {"get": 80.0, "set": 20.0}; a bare ``get`` is get=1."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition("=")
        name = name.strip().lower()
        if name not in OPS:
            raise argparse.ArgumentTypeError(f"unknown operation {name!r}; choose from {', '.join(OPS)}")
        try:
            mix[name] = float(weight) if weight else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight {weight!r} of {name} is not a number") from None
        if mix[name] < 0:
            raise argparse.ArgumentTypeError(f"weight of {name} must not be negative")
    if not sum(mix.values()) > 0:
        raise argparse.ArgumentTypeError("the mix needs at least one operation with a positive weight")
    return mix


def _positive_int(text: str) -> int:
    value = positive_float(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memlookup-benchmark",
        description="Load a memlookup (or Redis) server and report requests/s and latency percentiles.",
    )
    parser.add_argument("node", metavar="NODE", nargs="?", default="127.0.0.1:7400",
                        help="host:port of the server (default: 127.0.0.1:7400)")
    parser.add_argument("-c", "--clients", type=_positive_int, default=4, metavar="N",
                        help="client processes, each with its own connection (default: 4)")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("-n", "--requests", type=_positive_int, metavar="N",
                        help="total requests (default: 100000)")
    amount.add_argument("--duration", type=positive_float, metavar="S", help="run for S seconds instead")
    parser.add_argument("-d", "--value-bytes", type=_positive_int, default=32, metavar="B",
                        help="value size in bytes (default: 32)")
    parser.add_argument("-r", "--keyspace", type=_positive_int, default=100_000, metavar="N",
                        help="number of distinct keys, 16 bytes each (default: 100000)")
    parser.add_argument("--mix", type=_mix, default=_mix("get=50,set=50"), metavar="OP=W,...",
                        help=f"operation mix, from {', '.join(OPS)} (default: get=50,set=50)")
    parser.add_argument("-P", "--pipeline", type=_positive_int, default=1, metavar="N",
                        help="requests in flight per client; 1 is lockstep (default: 1)")
    parser.add_argument("-m", "--per-message", type=_positive_int, default=1, metavar="N",
                        help="with -P: requests packed into one batch message (memlookup only; default: 1)")
    parser.add_argument("-b", "--batch", type=_positive_int, default=10, metavar="N",
                        help="keys per mget/mset request (default: 10)")
    parser.add_argument("--prefill", action="store_true", help="store every key of the keyspace first (untimed)")
    parser.add_argument("--target", choices=sorted(DRIVERS), default="memlookup",
                        help="kind of server at NODE (default: memlookup)")
    parser.add_argument("--timeout", type=positive_float, default=5.0, metavar="S",
                        help="seconds to wait for a reply before the run fails (default: 5)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable request sequence")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def key_name(index: int) -> str:
    """The keyspace's index-th key: 16 bytes, like redis-benchmark's ``key:__rand_int__``."""
    return f"key:{index:012d}"


def _requests(args: argparse.Namespace, rng: random.Random, limit: int | None, deadline: float) -> Iterator[Request]:
    ops, weights = list(args.mix), list(args.mix.values())
    value = "x" * args.value_bytes
    keyspace, batch = args.keyspace, args.batch
    sent = 0
    while limit is None or sent < limit:
        if limit is None and time.perf_counter() >= deadline:
            return
        for op in rng.choices(ops, weights, k=REPORT_EVERY if limit is None else min(REPORT_EVERY, limit - sent)):
            count = batch if op in ("mget", "mset") else 1
            yield op, [key_name(rng.randrange(keyspace)) for _ in range(count)], value
            sent += 1


def _worker(args: argparse.Namespace, index: int, limit: int | None, start: Barrier, done: Synchronized[int],
            results: Queue[Report]) -> None:
    """One client process: wait for the start, run, report (count, errors, latencies, seconds)."""
    driver = DRIVERS[args.target](args.node, args.timeout)
    rng = random.Random(None if args.seed is None else args.seed + index)
    latencies: list[float] = []
    pending = 0

    def tick() -> None:
        nonlocal pending
        pending += 1
        if pending >= REPORT_EVERY:
            with done.get_lock():
                done.value += pending
            pending = 0

    try:
        driver.call("ping", [""], "")  # connect before the clock starts
        start.wait()
        began = time.perf_counter()
        deadline = began + (args.duration or 0)
        requests = _requests(args, rng, limit, deadline)
        errors = 0
        if args.pipeline == 1:
            perf = time.perf_counter
            call = driver.call
            for op, keys, value in requests:
                t0 = perf()
                try:
                    call(op, keys, value)
                except Exception as exc:  # a refusal; a dead node ends the run below
                    if type(exc).__name__ in ("NodeUnavailableError", "ConnectionError", "TimeoutError"):
                        raise
                    errors += 1
                latencies.append(perf() - t0)
                tick()
        else:
            errors = driver.run_pipelined(requests, args.pipeline, latencies, tick, args.per_message)
        elapsed = time.perf_counter() - began
        with done.get_lock():
            done.value += pending
        results.put((index, len(latencies), errors, array("d", latencies).tobytes(), elapsed, None))
    except BaseException as exc:  # report, never hang the parent
        start.abort()  # the others and the parent stop waiting for this one
        results.put((index, 0, 0, b"", 0.0, f"{type(exc).__name__}: {exc}"))
    finally:
        driver.close()


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def run(args: argparse.Namespace, show_progress: bool) -> dict[str, Any]:
    """Run the benchmark described by ``args``; returns the result as a dict."""
    if args.prefill:
        driver = DRIVERS[args.target](args.node, args.timeout)
        try:
            driver.prefill([key_name(i) for i in range(args.keyspace)], "x" * args.value_bytes)
        finally:
            driver.close()
    total = args.requests if args.requests or args.duration else 100_000
    ctx = mp.get_context("fork")
    start = ctx.Barrier(args.clients + 1)
    done: Synchronized[int] = ctx.Value("q", 0)
    results: Queue[Report] = ctx.Queue()
    workers = []
    for index in range(args.clients):
        limit = None if args.duration else total // args.clients + (index < total % args.clients)
        worker = ctx.Process(target=_worker, args=(args, index, limit, start, done, results), daemon=True)
        worker.start()
        workers.append(worker)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=None if args.duration else total, unit=" req", file=sys.stderr, leave=False)
    try:
        start.wait(timeout=60)
    except threading.BrokenBarrierError:
        pass  # a client failed to start; its report says why
    began = time.perf_counter()
    collected: list[Report] = []
    while len(collected) < len(workers):
        try:
            collected.append(results.get(timeout=0.2))
        except Exception:  # queue.Empty
            if not any(w.is_alive() for w in workers) and results.empty():
                break
        if bar is not None:
            bar.update(done.value - bar.n)
    wall_s = time.perf_counter() - began
    if bar is not None:
        bar.close()
    for worker in workers:
        worker.join(timeout=5)
    failures = [r[5] for r in collected if r[5]]
    if failures or len(collected) < len(workers):
        raise RuntimeError("a client failed: " + (failures[0] if failures else "it died without a report"))
    latencies: list[float] = []
    for r in collected:
        latencies.extend(array("d", r[3]))
    latencies.sort()
    count = sum(r[1] for r in collected)
    seconds = max(r[4] for r in collected) or wall_s
    us = 1e6
    return {
        "target": args.target,
        "node": args.node,
        "clients": args.clients,
        "pipeline": args.pipeline,
        "per_message": args.per_message,
        "batch": args.batch,
        "value_bytes": args.value_bytes,
        "keyspace": args.keyspace,
        "mix": args.mix,
        "requests": count,
        "errors": sum(r[2] for r in collected),
        "seconds": round(seconds, 4),
        "requests_per_s": round(count / seconds, 1) if seconds else 0.0,
        "latency_us": {
            "p50": round(percentile(latencies, 0.50) * us, 1),
            "p99": round(percentile(latencies, 0.99) * us, 1),
            "p99_9": round(percentile(latencies, 0.999) * us, 1),
            "max": round((latencies[-1] if latencies else 0.0) * us, 1),
            "mean": round(sum(latencies) / len(latencies) * us, 1) if latencies else 0.0,
        },
    }


def format_text(result: dict[str, Any]) -> str:
    mix = ",".join(f"{op}={weight:g}" for op, weight in result["mix"].items())
    lat = result["latency_us"]
    return "\n".join([
        f"{result['target']} at {result['node']}: {result['clients']} clients, pipeline {result['pipeline']} "
        f"({result['per_message']} per message), "
        f"batch {result['batch']}, {result['value_bytes']}-byte values, keyspace {result['keyspace']}, mix {mix}",
        f"  {result['requests']} requests in {result['seconds']:.2f} s, {result['errors']} errors",
        f"  throughput: {result['requests_per_s']:.0f} requests/s",
        f"  latency (us): p50 {lat['p50']:.0f}  p99 {lat['p99']:.0f}  p99.9 {lat['p99_9']:.0f}  "
        f"max {lat['max']:.0f}  mean {lat['mean']:.0f}",
    ])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args, show_progress=not args.quiet and sys.stderr.isatty())
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else format_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
