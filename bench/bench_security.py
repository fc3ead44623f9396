"""What the security features cost: the memory cap's hooks and CurveZMQ.

    python3 bench/bench_security.py            # prints a Markdown table

Two parts, each variant side by side in one run, repeated, medians reported
with the ratio to the plain server:

* handler: ``Handler.handle`` on get and set frames with no socket, timed in
  CPU seconds of this process (so other load on the host matters less), with and
  without the hooks of a :class:`server.memory.MemoryGuard` (the per-request
  cost the cap adds; the handler gets none without ``--max-memory``);
* socket: one client doing get round trips against a real server, plain,
  with ``--max-memory ... --eviction allkeys-lru``, and with CurveZMQ.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client import Client  # noqa: E402
from common.keys import create_key_pair  # noqa: E402
from common.protocol import encode_request  # noqa: E402
from server.eviction import EVICTION_POLICIES  # noqa: E402
from server.handler import Handler  # noqa: E402
from server.memory import MemoryGuard  # noqa: E402
from server.store import Store  # noqa: E402
from tests.servers import ServerProcess  # noqa: E402

REPEATS = 7
HANDLER_REPEATS = 21
HANDLER_CALLS = 20_000
ROUND_TRIPS = 5_000


def _handler(policy: str | None) -> Handler:
    store = Store()
    guard = None if policy is None else MemoryGuard(store, 1 << 40, EVICTION_POLICIES[policy], baseline_bytes=0)
    handler = Handler(store, memory=guard)
    for i in range(10_000):
        handler.handle(encode_request("set", f"key:{i}", "v" * 100))
    return handler


def handler_rates() -> dict[str, dict[str, float]]:
    variants = {"plain": None, "noeviction": "noeviction", "allkeys-lru": "allkeys-lru"}
    handlers = {name: _handler(policy) for name, policy in variants.items()}
    gets = [encode_request("get", f"key:{i % 10_000}") for i in range(HANDLER_CALLS)]
    sets = [encode_request("set", f"key:{i % 10_000}", "w" * 100) for i in range(HANDLER_CALLS)]
    rates: dict[str, dict[str, list[float]]] = {name: {"get": [], "set": []} for name in variants}
    order = list(handlers)
    for repeat in range(HANDLER_REPEATS):
        # interleaved, and each variant first in turn, so drift hits all alike
        for name in order[repeat % len(order):] + order[:repeat % len(order)]:
            handler = handlers[name]
            for op, frames in (("get", gets), ("set", sets)):
                handle = handler.handle
                started = time.process_time()  # CPU time: other processes on the host do not count
                for frame in frames:
                    handle(frame)
                rates[name][op].append(len(frames) / (time.process_time() - started))
    return {name: {op: statistics.median(r) for op, r in ops.items()} for name, ops in rates.items()}


def socket_rates() -> dict[str, float]:
    keys = Path(tempfile.mkdtemp())
    server_public, server_secret = create_key_pair(keys, "server")
    _, client_secret = create_key_pair(keys / "clients", "bench")
    # Each server, and the (server_key, client_key) its client needs.
    servers: dict[str, tuple[ServerProcess, tuple[str | None, str | None]]] = {
        "plain": (ServerProcess([]), (None, None)),
        "allkeys-lru": (ServerProcess(["--max-memory", "1gb",
                                       "--eviction", "allkeys-lru"]), (None, None)),
        "curve": (ServerProcess(["--curve-secret-key", str(server_secret),
                                 "--authorized-keys", str(keys / "clients")]),
                  (str(server_public), str(client_secret))),
    }
    rates: dict[str, list[float]] = {name: [] for name in servers}
    clients = {name: Client(server.node, timeout_s=5, server_key=server_key, client_key=client_key)
               for name, (server, (server_key, client_key)) in servers.items()}
    try:
        for client in clients.values():
            client.set("k", "v" * 100)
        names = list(clients)
        for repeat in range(REPEATS):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                client = clients[name]
                started = time.perf_counter()
                for _ in range(ROUND_TRIPS):
                    client.get("k")
                rates[name].append(ROUND_TRIPS / (time.perf_counter() - started))
    finally:
        for client in clients.values():
            client.close()
        for server, _ in servers.values():
            server.stop()
    return {name: statistics.median(r) for name, r in rates.items()}


def decoder_costs() -> dict[int, tuple[float, float, float]]:
    """Per ``mget`` frame: a bare ``msgpack.unpackb`` (the floor) and ``decode_request``.

    Frames of more than 15 keys take the bomb-proof path (a ``skip`` pass that
    builds nothing, then the decode). The two are timed in turns, in CPU
    seconds, and the ratio is taken per pair, so load on the host cancels out
    as far as it can. Returns ``{keys: (bare_us, full_us, median_ratio)}``.
    """
    import msgpack

    from common.protocol import decode_request

    costs = {}
    for keys in (10, 17, 100, 1000, 10_000):
        frame = encode_request("mget", [f"key:{i}" for i in range(keys)])
        number = max(20, 100_000 // keys)
        bare_runs, full_runs, ratios = [], [], []
        for _ in range(HANDLER_REPEATS):
            started = time.process_time()
            for _ in range(number):
                msgpack.unpackb(frame, raw=False, max_array_len=20_000)
            bare = (time.process_time() - started) / number
            started = time.process_time()
            for _ in range(number):
                decode_request(frame)
            full = (time.process_time() - started) / number
            bare_runs.append(bare * 1e6)
            full_runs.append(full * 1e6)
            ratios.append(full / bare)
        costs[keys] = (statistics.median(bare_runs), statistics.median(full_runs), statistics.median(ratios))
    return costs


def main() -> None:
    costs = decoder_costs()
    print(f"Decoding an mget frame, µs of CPU, median of {HANDLER_REPEATS} paired runs:\n")
    print("| keys | msgpack.unpackb | decode_request | ratio (paired) |\n| ---: | ---: | ---: | ---: |")
    for keys, (bare, full, ratio) in costs.items():
        print(f"| {keys:,} | {bare:.2f} | {full:.2f} | {ratio:.2f} |")
    print()
    handler = handler_rates()
    print(f"Handler.handle, no socket, 10,000 keys of 100 bytes; CPU time, median of {HANDLER_REPEATS} "
          f"interleaved runs of {HANDLER_CALLS:,} calls\n")
    print("| variant | get/s | ratio | set/s | ratio |\n| --- | ---: | ---: | ---: | ---: |")
    base = handler["plain"]
    for name, r in handler.items():
        print(f"| {name} | {r['get']:,.0f} | {r['get'] / base['get']:.2f} | {r['set']:,.0f} | "
              f"{r['set'] / base['set']:.2f} |")
    sockets = socket_rates()
    print(f"\nOne client, get round trips over loopback; median of {REPEATS} runs of {ROUND_TRIPS:,}\n")
    print("| server | get/s | ratio |\n| --- | ---: | ---: |")
    for name, rate in sockets.items():
        print(f"| {name} | {rate:,.0f} | {rate / sockets['plain']:.2f} |")


if __name__ == "__main__":
    main()
