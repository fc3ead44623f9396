"""What hostile load does to a server: peak memory, the wait of other clients, stop time.

    python3 bench/hostile_load.py                      # this tree
    python3 bench/hostile_load.py --before /tmp/old    # and, side by side, an older checkout

Every figure comes from real servers (``python -m server`` from the tree
given) on loopback:

* memory: with ``--max-memory 64mb`` and a 1 MiB value ``big``, each attack
  against a fresh server: ``["mget", ["big"] * 300]`` (1.2 KB asking for
  300 MiB), a DEALER that sends 600 ``get big`` and never reads, and a 10 MB
  frame of densely packed empty arrays. Reported: the reply's status, the
  peak RSS (VmHWM), whether ``ping`` answers afterwards (and in how long),
  and ``stats``' count of disconnected peers;
* keys: 10,000 keys of 1 KB, half of which match; one client scans them with
  a pattern (pages of count 10,000; or five scans at once, their pages in one
  ``batch``) while another pings in lockstep, in its own process: the longest
  ping, the scan's time, and whether every matching key came exactly once;
  then SIGTERM in the middle of a scan, and the time until the server exits;
* decoder and handler without a socket: CPU time per ``unpack_request`` of
  small and large frames, and per ``Handler.handle`` of a get and a set;
* lockstep ``get``: one client's round trips against each tree's server in
  turn (32-byte, 16 KiB and 256 KiB values), the median of each round's p50,
  and the median ratio to this tree's in the same round.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client import Client  # noqa: E402
from common.protocol import decode_reply, encode_batch, encode_request  # noqa: E402
from tests.hostile import RawPeer, read_status_kib  # noqa: E402
from tests.servers import ServerProcess  # noqa: E402

MIB = 1024 * 1024
CAP = "64mb"
KEYS = 10_000
KEY_PATTERNS = {
    "issue's pattern": "*" + "a" * 1000 + "b",
    "32 sets between stars": "*" + "[a-z]" * 31 + "b*",
}


def start(tree: Path, *args: str) -> ServerProcess:
    """A server run from ``tree`` (a checkout of memlookup)."""
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from server.__main__ import main; sys.exit(main())"
    return ServerProcess(list(args), program=[sys.executable, "-c", code])


def dense_frame(size_bytes: int) -> bytes:
    """``["mget", [[[] x 10,000] x N]]``: one byte per empty array."""
    inner = b"\xdc" + (10_000).to_bytes(2, "big") + b"\x90" * 10_000
    count = size_bytes // len(inner)
    return b"\x92\xa4mget\xdc" + count.to_bytes(2, "big") + inner * count


def _ping_after(server: ServerProcess) -> str:
    try:
        with Client(server.node, timeout_s=30, retries=0) as table:
            began = time.perf_counter()
            table.ping()
            return f"{(time.perf_counter() - began) * 1000:.1f} ms"
    except Exception as exc:  # the figure is that it did not answer
        return f"no ({type(exc).__name__})"


def _disconnected(server: ServerProcess) -> Any:
    try:
        with Client(server.node, timeout_s=30, retries=0) as table:
            return table.stats().get("output", {}).get("disconnected_peers", "n/a")
    except Exception:
        return "n/a"


def memory_attack(tree: Path, attack: str) -> dict[str, Any]:
    server = start(tree, "--max-memory", CAP)
    try:
        with Client(server.node, timeout_s=30) as table:
            table.set("big", "x" * MIB)
        pid = server.proc.pid
        peer = RawPeer(server.node)
        status = "no reply"
        began = time.perf_counter()
        if attack == "mget amplification":
            peer.send(encode_request("mget", ["big"] * 300))
            try:
                status = _status(peer.recv(120))
            except TimeoutError:
                pass
        elif attack == "never-reading peer":
            request = encode_request("get", "big")
            for _ in range(600):
                peer.send(request)
            time.sleep(3)
            status = "(not read)"
        else:
            peer.send(dense_frame(10 * 1000 * 1000))
            try:
                status = _status(peer.recv(120))
            except TimeoutError:
                pass
        seconds = time.perf_counter() - began
        peak_bytes = read_status_kib(pid, "VmHWM") * 1024
        ping = _ping_after(server)
        disconnected = _disconnected(server)
        peer.close()
        return {"attack": attack, "status": status, "seconds": seconds, "peak_mib": peak_bytes / MIB,
                "within_cap_plus_half": peak_bytes <= 64 * MIB * 1.5, "ping_after": ping,
                "disconnected_peers": disconnected}
    finally:
        server.kill()


def _status(reply: bytes) -> str:
    status, payload = decode_reply(reply)
    return "0 OK" if status == 0 else f"{status} {str(payload)[:60]}"


def _pinger(node: str, stop: Any, out: Any) -> None:
    """Lockstep pings until ``stop`` is set; reports every wait in seconds."""
    waits = []
    with Client(node, timeout_s=120, retries=0) as table:
        while not stop.is_set():
            began = time.perf_counter()
            table.ping()
            waits.append(time.perf_counter() - began)
            time.sleep(0.001)
    out.put(waits)


def key_names() -> list[str]:
    """1 KB keys: half match the issue's pattern; on the other half its regex backtracks longest."""
    return [f"{i:06d}" + "a" * 1017 + "bc"[i % 2] for i in range(KEYS)]


def _fill(server: ServerProcess) -> list[str]:
    names = key_names()
    with Client(server.node, timeout_s=60) as table:
        for first in range(0, KEYS, 500):
            table.mset({name: "v" for name in names[first:first + 500]})
    return names


def _scan(node: str, pattern: str, timeout_s: float, batch: int = 1) -> tuple[list[str], int]:
    """Every key matching ``pattern``, in pages of count 10,000.

    With ``batch`` > 1, that many scans run side by side, their pages sent
    together as one ``batch`` request; the keys of the first are returned.
    """
    if batch == 1:
        with Client(node, timeout_s=timeout_s, retries=0) as table:
            found, cursor, pages = [], 0, 0
            while True:
                cursor, page = table.scan(cursor, pattern, 10_000)
                found += page
                pages += 1
                if cursor == 0:
                    return found, pages
    peer = RawPeer(node)
    try:
        cursors, done = [0] * batch, [False] * batch
        found, pages = [], 0
        while not all(done):
            live = [i for i in range(batch) if not done[i]]
            peer.send(encode_batch([encode_request("keys", pattern, cursors[i], 10_000) for i in live]))
            status, replies = decode_reply(peer.recv(timeout_s))
            if status != 0:
                raise RuntimeError(f"batch refused: {replies}")
            for i, (item_status, payload) in zip(live, replies, strict=True):
                if item_status != 0:
                    raise RuntimeError(f"keys refused: {payload}")
                cursors[i], page = payload
                done[i] = cursors[i] == 0
                found += page if i == 0 else []
                pages += 1
        return found, pages
    finally:
        peer.close()


def keys_scan(tree: Path, pattern: str, batch: int = 1, timeout_s: float = 120) -> dict[str, Any]:
    server = start(tree)
    try:
        names = _fill(server)
        ctx = mp.get_context("fork")
        stop, out = ctx.Event(), ctx.Queue()
        pinger = ctx.Process(target=_pinger, args=(server.node, stop, out), daemon=True)
        pinger.start()
        time.sleep(0.3)
        began = time.perf_counter()
        try:
            found, pages = _scan(server.node, pattern, timeout_s, batch)
            outcome = "ok"
        except Exception as exc:
            found, pages, outcome = [], 0, f"{type(exc).__name__}"
        seconds = time.perf_counter() - began
        stop.set()
        waits = sorted(out.get(timeout=timeout_s + 30))
        pinger.join(5)
        matching = [n for n in names if _fnmatch(n, pattern)]
        return {"pattern": pattern[:24], "batch": batch, "outcome": outcome, "scan_s": seconds, "pages": pages,
                "exactly_once": sorted(found) == sorted(matching), "pings": len(waits),
                "p99_ping_ms": waits[int(len(waits) * 0.99)] * 1000, "longest_ping_ms": waits[-1] * 1000}
    finally:
        server.kill()


def _fnmatch(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def sigterm_during_scan(tree: Path, pattern: str, limit_s: float = 15) -> dict[str, Any]:
    server = start(tree)
    try:
        _fill(server)
        scanner = threading.Thread(target=lambda: _quiet_scan(server.node, pattern), daemon=True)
        scanner.start()
        time.sleep(0.3)
        began = time.perf_counter()
        server.signal(signal.SIGTERM)
        try:
            code = server.proc.wait(limit_s)
            seconds = time.perf_counter() - began
        except subprocess.TimeoutExpired:
            code, seconds = None, None
        return {"pattern": pattern[:24], "exit_code": code,
                "sigterm_to_exit_s": seconds if seconds is not None else f"> {limit_s} (killed)"}
    finally:
        server.kill()


def _quiet_scan(node: str, pattern: str) -> None:
    try:
        while True:
            _scan(node, pattern, 30)
    except Exception:
        pass  # the server stopped under it


def lockstep_get(trees: dict[str, Path], value_bytes: int, rounds: int, requests: int) -> dict[str, dict[str, float]]:
    """Median per-round p50 of lockstep ``get`` round trips, the trees' servers taking turns.

    Also the median over rounds of each tree's p50 divided by the first
    tree's in the same round (paired, so load on the host cancels out as far
    as it can), and the CPU time of the server's loop thread per request
    (from /proc/PID/task/PID/schedstat), which waiting for the CPU does not
    inflate.
    """
    servers = {name: start(tree) for name, tree in trees.items()}
    clients = {name: Client(server.node, timeout_s=10) for name, server in servers.items()}
    p50s: dict[str, list[float]] = {name: [] for name in trees}
    cpu_s = {name: 0.0 for name in trees}
    try:
        for client in clients.values():
            client.set("k", "v" * value_bytes)
            for _ in range(200):  # warm up
                client.get("k")
        names = list(trees)
        for round_ in range(rounds):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                get, times = clients[name].get, []
                cpu_before = _cpu_s(servers[name].proc.pid)
                for _ in range(requests):
                    began = time.perf_counter()
                    get("k")
                    times.append(time.perf_counter() - began)
                cpu_s[name] += _cpu_s(servers[name].proc.pid) - cpu_before
                p50s[name].append(statistics.median(times))
    finally:
        for client in clients.values():
            client.close()
        for server in servers.values():
            server.kill()
    first = next(iter(trees))
    return {name: {"p50_us": statistics.median(values) * 1e6,
                   "paired_ratio": statistics.median(v / f for v, f in zip(values, p50s[first], strict=True)),
                   "server_cpu_us": cpu_s[name] / (rounds * requests) * 1e6}
            for name, values in p50s.items()}


def _cpu_s(pid: int) -> float:
    """CPU seconds of process ``pid``'s main thread, the server loop (to the nanosecond)."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as schedstat:
        return int(schedstat.read().split()[0]) / 1e9


#: Run in a subprocess given the trees' paths: imports each tree's decoder and
#: handler (clearing the modules in between, so both stay usable side by
#: side), then times them in turns; prints CPU µs per call.
_DECODE_CODE = r"""
import importlib, json, statistics, sys, time
import msgpack
trees = sys.argv[1:]
loaded = []
for tree in trees:
    for module in [m for m in sys.modules if m.split(".")[0] in ("common", "server")]:
        del sys.modules[module]
    sys.path.insert(0, tree)
    protocol = importlib.import_module("common.protocol")
    handler_module, store_module = importlib.import_module("server.handler"), importlib.import_module("server.store")
    sys.path.pop(0)
    handler = handler_module.Handler(store_module.Store())
    for i in range(1000):
        handler.store.set(f"key:{i:012d}", "x" * 32)
    loaded.append((protocol.unpack_request, handler.handle))
requests = {
    "decode get": ["get", "key:000000000001"],
    "decode set, 32 B, rid": ["set", "key:000000000001", "x" * 32, {"rid": "9f3a5c0e1b2d4f68:1"}],
    "decode mget, 100 keys": ["mget", [f"key:{i:012d}" for i in range(100)]],
    "decode mget, 10,000 keys": ["mget", [f"key:{i:012d}" for i in range(10_000)]],
    "decode mset, 10,000 pairs": ["mset", {f"key:{i:012d}": "v" * 100 for i in range(10_000)}],
    "decode batch of 256 sets": ["batch", [["set", f"k{i}", "v" * 100, {"rid": f"r:{i}"}] for i in range(256)]],
    "decode set, 1 MB": ["set", "k", "x" * 1_000_000],
}
gets = [msgpack.packb(["get", f"key:{i % 1000:012d}"]) for i in range(20_000)]
sets = [msgpack.packb(["set", f"key:{i % 1000:012d}", "y" * 32, {"rid": f"r:{i}"}]) for i in range(20_000)]
out = [dict() for _ in trees]
for name, request in list(requests.items()) + [("handle get", gets), ("handle set", sets)]:
    handled = name.startswith("handle")
    frames = request if handled else [msgpack.packb(request)] * max(20, 200_000 // len(msgpack.packb(request)))
    runs = [[] for _ in trees]
    for turn in range(15):
        for index in (range(len(trees)) if turn % 2 else reversed(range(len(trees)))):
            call = loaded[index][1 if handled else 0]
            began = time.process_time()
            for frame in frames:
                call(frame)
            runs[index].append((time.process_time() - began) / len(frames) * 1e6)
    for index in range(len(trees)):
        out[index][name] = statistics.median(runs[index])
print(json.dumps(out))
"""


def decode_costs(trees: dict[str, Path]) -> dict[str, dict[str, float]]:
    """CPU µs per decode and per handled get/set, the trees' code taking turns in one process."""
    result = subprocess.run([sys.executable, "-c", _DECODE_CODE, *map(str, trees.values())], capture_output=True,
                            text=True, timeout=1200, check=True)
    return dict(zip(trees, json.loads(result.stdout), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="a checkout to measure side by side (e.g. git worktree of main)")
    parser.add_argument("--rounds", type=int, default=30, help="lockstep rounds per tree (default 30)")
    parser.add_argument("--requests", type=int, default=2_000, help="gets per lockstep round (default 2000)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["memory", "keys", "sigterm", "lockstep", "decode"])
    args = parser.parse_args()
    trees = {"this tree": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    if "memory" not in args.skip:
        print(f"With --max-memory {CAP} (limit plus 50%: {64 * 1.5:.0f} MiB), a fresh server per attack:\n")
        print("| tree | attack | reply | seconds | peak RSS MiB | within cap+50% | ping after | disconnected |")
        print("| --- | --- | --- | ---: | ---: | --- | --- | ---: |")
        for name, tree in trees.items():
            for attack in ("mget amplification", "never-reading peer", "10 MB dense frame"):
                r = memory_attack(tree, attack)
                print(f"| {name} | {attack} | {r['status']} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | "
                      f"{'yes' if r['within_cap_plus_half'] else 'NO'} | {r['ping_after']} | "
                      f"{r['disconnected_peers']} |")
    if "keys" not in args.skip:
        print(f"\n{KEYS:,} keys of 1 KB; keys pages of count 10,000 while another process pings:\n")
        print("| tree | pattern | batch of | outcome | scan s | pages | each key once | pings | p99 ping ms | "
              "longest ping ms |")
        print("| --- | --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: |")
        for name, tree in trees.items():
            for label, pattern in KEY_PATTERNS.items():
                for batch in (1, 5):
                    r = keys_scan(tree, pattern, batch)
                    print(f"| {name} | {label} | {batch} | {r['outcome']} | {r['scan_s']:.2f} | {r['pages']} | "
                          f"{'yes' if r['exactly_once'] else 'NO'} | {r['pings']} | {r['p99_ping_ms']:.1f} | "
                          f"{r['longest_ping_ms']:.1f} |")
    if "sigterm" not in args.skip:
        print("\nSIGTERM 0.3 s into a scan with the issue's pattern:\n")
        print("| tree | exit code | SIGTERM to exit s |\n| --- | --- | ---: |")
        for name, tree in trees.items():
            r = sigterm_during_scan(tree, KEY_PATTERNS["issue's pattern"])
            seconds = r["sigterm_to_exit_s"]
            print(f"| {name} | {r['exit_code']} | {seconds if isinstance(seconds, str) else f'{seconds:.3f}'} |")
    if "decode" not in args.skip:
        costs = decode_costs(trees)
        print("\nDecoder and handler, no socket: CPU µs per call, median of 15 runs, the trees' code "
              "taking turns in one process\n")
        print("| call | " + " | ".join(trees) + " |\n| --- |" + " ---: |" * len(trees))
        for key in next(iter(costs.values())):
            print(f"| {key} | " + " | ".join(f"{costs[name][key]:.2f}" for name in trees) + " |")
    if "lockstep" not in args.skip:
        for value_bytes in (32, 16 * 1024, 256 * 1024):
            result = lockstep_get(trees, value_bytes, args.rounds, args.requests)
            print(f"\nLockstep get, one client, {value_bytes}-byte values: median of {args.rounds} rounds of "
                  f"{args.requests:,}, the servers taking turns\n")
            print("| tree | p50 µs | p50 / this tree's, paired by round | server loop CPU µs per request |\n"
                  "| --- | ---: | ---: | ---: |")
            for name, r in result.items():
                print(f"| {name} | {r['p50_us']:.1f} | {r['paired_ratio']:.3f} | {r['server_cpu_us']:.1f} |")


if __name__ == "__main__":
    main()
