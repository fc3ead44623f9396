"""The server's two cores side by side in one run: lockstep latency against the echo floor, and pipelined capacity.

    python3 -m bench.cores           # 20,000 lockstep requests per case, 200,000 per pipelined run
    python3 -m bench.cores --quick   # small sizes, a smoke test

Starts one server on each core (server/core.py: the compiled one, and the
pure-Python one with ``MEMLOOKUP_PURE_PYTHON=1``) and a pyzmq REQ/REP echo of
the same message sizes (bench/compare.py's floor), then measures, interleaved
so that machine load hits every case alike:

1. one client in lockstep, median latency of ``get`` and of ``set`` (with a
   request id, as the library sends it): through :class:`client.Client` to
   each core, and through a bare REQ socket to each core and to the echo
   (the difference is the client library's own time);
2. capacity with ``python -m bench NODE -c 2 -P 64``: one request a message,
   and 16 to a ``batch`` message (bench.compare's row 3); get=50,set=50 over
   100,000 keys; three runs per core, alternating, and their median.

Prints a markdown table with the ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
from collections.abc import Callable
from typing import Any

from bench.compare import VALUE, bench, echo_server, free_port, median_us, memlookup_server

CORES = {"compiled": {"MEMLOOKUP_PURE_PYTHON": "0"}, "pure Python": {"MEMLOOKUP_PURE_PYTHON": "1"}}


def lockstep(nodes: dict[str, str], count: int) -> dict[str, float]:
    """Median microseconds per get and per set, for each core's node and for the echo; interleaved rounds."""
    import zmq

    from client import Client
    from common.protocol import encode_request, ok

    key = "key:000000000001"
    get_request = encode_request("get", key)
    set_request = encode_request("set", key, VALUE, options={"rid": "0123456789abcdef:1000000"})
    port = free_port()
    echo_process = mp.get_context("fork").Process(
        target=echo_server, args=(port, {len(get_request): ok(VALUE), len(set_request): ok(True)}), daemon=True)
    echo_process.start()
    sockets: dict[str, zmq.Socket[bytes]] = {}
    for name, node in {"echo": f"127.0.0.1:{port}", **nodes}.items():
        sockets[name] = zmq.Context.instance().socket(zmq.REQ)
        sockets[name].setsockopt(zmq.LINGER, 0)
        sockets[name].connect(f"tcp://{node}")
    clients = {name: Client(node, timeout_s=5, retries=0) for name, node in nodes.items()}

    def raw(sock: zmq.Socket[bytes], frame: bytes) -> Callable[[], object]:
        return lambda: (sock.send(frame), sock.recv())

    def get(table: Client) -> Callable[[], object]:
        return lambda: table.get(key)

    def set_(table: Client) -> Callable[[], object]:
        return lambda: table.set(key, VALUE)

    cases: dict[str, Callable[[], object]] = {}
    for name, sock in sockets.items():
        cases[f"get raw {name}"], cases[f"set raw {name}"] = raw(sock, get_request), raw(sock, set_request)
    for name, table in clients.items():
        table.set(key, VALUE)
        cases[f"get {name}"], cases[f"set {name}"] = get(table), set_(table)
    rounds: dict[str, list[float]] = {}
    try:
        for call in cases.values():  # warm up: connections, caches
            median_us(call, 200)
        for _ in range(5):
            for name, call in cases.items():
                rounds.setdefault(name, []).append(median_us(call, count // 5))
    finally:
        for table in clients.values():
            table.close()
        for sock in sockets.values():
            sock.close()
        echo_process.kill()
    return {name: statistics.median(values) for name, values in rounds.items()}


def capacity(nodes: dict[str, str], requests: int, per_message: int, runs: int = 3) -> dict[str, float]:
    """Median requests/s of ``runs`` pipelined loads of each node, alternating."""
    rates: dict[str, list[float]] = {name: [] for name in nodes}
    for _ in range(runs):
        for name, node in nodes.items():
            result = bench(node, "-c", "2", "-P", "64", "-m", str(per_message), "-n", str(requests),
                           "--mix", "get=50,set=50", "-r", "100000")
            rates[name].append(result["requests_per_s"])
    return {name: statistics.median(values) for name, values in rates.items()}


def render(latency: dict[str, float], pipelined: dict[int, dict[str, float]], command: str) -> str:
    lines = [f"`{command}`", "", "| figure | compiled core | pure-Python core | compiled / pure | echo floor "
             "| compiled / echo | pure / echo |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for op in ("get", "set"):
        for how, prefix in (("Client", ""), ("bare REQ socket", "raw ")):
            compiled, pure = latency[f"{op} {prefix}compiled"], latency[f"{op} {prefix}pure Python"]
            echo = latency[f"{op} raw echo"]
            lines.append(f"| lockstep {op} through {how}, median | {compiled:.1f} us | {pure:.1f} us "
                         f"| {compiled / pure:.2f} | {echo:.1f} us | {compiled / echo:.2f} | {pure / echo:.2f} |")
    for per_message, rates in pipelined.items():
        compiled, pure = rates["compiled"], rates["pure Python"]
        lines.append(f"| -c 2 -P 64 -m {per_message}, get/set 50/50 | {compiled:,.0f} req/s | {pure:,.0f} req/s "
                     f"| {compiled / pure:.2f} | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cores", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    args = parser.parse_args(argv)
    latency_n, capacity_n = (2_000, 20_000) if args.quick else (20_000, 200_000)
    with memlookup_server(CORES["compiled"]) as (compiled, _), memlookup_server(CORES["pure Python"]) as (pure, _):
        nodes = {"compiled": compiled, "pure Python": pure}
        latency = lockstep(nodes, latency_n)
        pipelined: dict[int, dict[str, Any]] = {m: capacity(nodes, capacity_n, m) for m in (1, 16)}
    print(render(latency, pipelined, "python3 -m bench.cores" + (" --quick" if args.quick else "")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
