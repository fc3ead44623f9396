"""Server capacity, measured with a load generator that is not what limits it.

    python3 -m bench.capacity NODE [-c 2] [-P 64] [-m 16] [--duration 5] [--server-pid PID]

``python -m bench`` builds each request in Python, times it, and decodes its
reply; at ``-c 2 -P 64 -m 16`` on two cores that costs the generator more
than the compiled server spends answering (the server used about a fifth of a
core while the generator held the rest: docs/BENCHMARKS.md, "Server
capacity"), so its requests/s were the generator's. This one does what
``redis-benchmark`` does: it builds its messages before the clock starts --
``batch`` messages of ``-m`` requests, ``get`` and ``set`` at random over the
keyspace -- and per reply only counts its items and the ones refused. With
``--server-pid`` it also reports the share of one core the server used, so a
reader can tell which side held the figure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import time
from typing import TYPE_CHECKING, Any

import msgpack
import zmq

from bench.__main__ import key_name
from client.cli_parser import positive_float
from common.protocol import encode_batch, encode_request

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

#: Distinct messages a client cycles through (each of ``-m`` random requests).
MESSAGES = 512


def build_messages(per_message: int, keyspace: int, value_bytes: int, seed: int) -> list[bytes]:
    """``MESSAGES`` batch frames of ``per_message`` requests each, get and set half and half."""
    rng = random.Random(seed)
    value = "x" * value_bytes
    messages = []
    for _ in range(MESSAGES):
        requests = []
        for _ in range(per_message):
            key = key_name(rng.randrange(keyspace))
            requests.append(encode_request("get", key) if rng.random() < 0.5 else encode_request("set", key, value))
        messages.append(encode_batch(requests))
    return messages


def client(node: str, messages: list[bytes], in_flight: int, duration_s: float, timeout_s: float,
           start: Barrier, results: Queue[tuple[int, int, float, str | None]]) -> None:
    """One connection: keep ``in_flight`` messages outstanding for ``duration_s``; report
    (requests answered, requests refused, seconds, the error that ended it or None)."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://{node}")
    answered = refused = 0
    try:
        sock.send_multipart([b"", encode_request("ping")])  # connected before the clock starts
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no reply from {node} within {timeout_s} s")
        sock.recv_multipart()
        start.wait()
        began = time.perf_counter()
        deadline = began + duration_s
        sent = 0
        for _ in range(in_flight):
            sock.send_multipart([b"", messages[sent % MESSAGES]], copy=False)
            sent += 1
        outstanding = in_flight
        while outstanding:
            if not sock.poll(int(timeout_s * 1000)):
                raise TimeoutError(f"no reply from {node} within {timeout_s} s")
            status, items = msgpack.unpackb(sock.recv_multipart()[-1])
            outstanding -= 1
            if status != 0:
                raise RuntimeError(f"the server refused a batch: {items!r}")
            answered += len(items)
            refused += sum(1 for item in items if item[0] != 0)
            if time.perf_counter() < deadline:
                sock.send_multipart([b"", messages[sent % MESSAGES]], copy=False)
                sent += 1
                outstanding += 1
        results.put((answered, refused, time.perf_counter() - began, None))
    except BaseException as exc:  # report, never leave the parent waiting
        start.abort()
        results.put((0, 0, 0.0, f"{type(exc).__name__}: {exc}"))
    finally:
        sock.close()
        context.term()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process ``pid`` has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(node: str, clients: int = 2, pipeline: int = 64, per_message: int = 16, duration_s: float = 5.0,
            keyspace: int = 100_000, value_bytes: int = 32, server_pid: int | None = None,
            timeout_s: float = 5.0) -> dict[str, Any]:
    """Run the load; returns requests_per_s, refused, and server_cpu (the share of one core the
    server used) when ``server_pid`` is given."""
    in_flight = max(1, pipeline // per_message)
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(clients + 1)
    results: Queue[tuple[int, int, float, str | None]] = ctx.Queue()
    workers = [ctx.Process(target=client, args=(node, build_messages(per_message, keyspace, value_bytes, seed),
                                                in_flight, duration_s, timeout_s, start, results))
               for seed in range(clients)]
    for worker in workers:
        worker.start()
    try:
        start.wait(timeout=60)
        cpu_before, wall_before = (cpu_seconds(server_pid) if server_pid else 0.0), time.perf_counter()
        reports = [results.get(timeout=duration_s + 4 * timeout_s + 60) for _ in workers]
        wall_s = time.perf_counter() - wall_before
        server_cpu = (cpu_seconds(server_pid) - cpu_before) / wall_s if server_pid else None
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    errors = [error for *_, error in reports if error]
    if errors:
        raise RuntimeError(errors[0])
    answered = sum(report[0] for report in reports)
    seconds = max(report[2] for report in reports)
    return {"requests": answered, "refused": sum(report[1] for report in reports),
            "requests_per_s": answered / seconds, "seconds": seconds, "server_cpu": server_cpu,
            "clients": clients, "pipeline": in_flight * per_message, "per_message": per_message}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench.capacity", description=__doc__.splitlines()[0])
    parser.add_argument("node", metavar="NODE", help="host:port of the server")
    parser.add_argument("-c", "--clients", type=int, default=2, help="client processes (default: 2)")
    parser.add_argument("-P", "--pipeline", type=int, default=64, help="requests in flight per client (default: 64)")
    parser.add_argument("-m", "--per-message", type=int, default=16, help="requests per batch message (default: 16)")
    parser.add_argument("--duration", type=positive_float, default=5.0, metavar="S", help="seconds (default: 5)")
    parser.add_argument("-r", "--keyspace", type=int, default=100_000, help="distinct keys (default: 100000)")
    parser.add_argument("--server-pid", type=int, help="the server's pid, to report its CPU share")
    args = parser.parse_args()
    print(json.dumps(measure(args.node, args.clients, args.pipeline, args.per_message, args.duration, args.keyspace,
                             server_pid=args.server_pid)))


if __name__ == "__main__":
    main()
