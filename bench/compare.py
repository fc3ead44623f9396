"""memlookup and Redis side by side, in one run, into ``docs/BENCHMARKS.md``.

    python3 -m bench.compare            # the full run (1 M keys; a few minutes)
    python3 -m bench.compare --quick    # small sizes, a smoke test
    python3 -m bench.compare --no-write # print the table only

Starts a memlookup server and a local ``redis-server`` (installing the Debian
packages when missing and run as root), then measures, each pair in the same
run so machine load hits both alike:

1. one client in lockstep, median latency of get and of set: memlookup's
   library, redis-py against Redis, and a bare pyzmq REQ/REP echo of the same
   message sizes (the floor of this stack);
2. four client processes in lockstep (get=50,set=50): requests/s, memlookup's
   library vs redis-py;
3. server capacity: memlookup with pipelined single-key requests (64 in
   flight per client, 16 to a ``batch`` message, from ``bench.capacity``,
   whose messages are built before the clock starts as redis-benchmark's are)
   vs ``redis-benchmark -c 16`` without pipelining; the server's share of a
   core during the run, and redis-benchmark pipelined (``-c 2 -P 64``) beside
   it for scale;
4. bulk load of N pairs (16-byte keys, 32-byte values) from a file:
   ``memlookup NODE --pipe`` vs ``redis-cli --pipe``;
5. memory per key after that load: growth of memlookup's RSS vs growth of
   Redis ``used_memory``, divided by N;
6. a one-shot CLI ``get`` vs ``python -c "import zmq, msgpack"`` (wall time);
7. restart with N keys, from the snapshot and from the journal, vs Redis
   loading its AOF of the same keys (``bench/persistence.py``, median of 3).

The ``## Speed`` section of the document is replaced; other sections stay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import capacity, persistence

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Speed"
VALUE = "v" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Callable[[], object], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def memlookup_server(env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A server of the checkout on a free port, with ``env`` added to the environment; yields (node, process)."""
    from client import Client

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    node = f"127.0.0.1:{port}"
    try:
        with Client(node, timeout_s=0.5, retries=0) as probe:
            wait_until(probe.ping, "memlookup server")
        yield node, proc
    finally:
        proc.terminate()
        proc.wait(10)


def ensure_redis() -> None:
    if shutil.which("redis-server") and shutil.which("redis-benchmark"):
        return
    if os.geteuid() != 0:
        raise SystemExit("redis-server is not installed: apt-get install redis-server redis-tools")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server", "redis-tools"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, Any]]:
    import redis

    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, decode_responses=True)
    try:
        wait_until(client.ping, "redis-server")
        yield f"127.0.0.1:{port}", client
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


# -- 1. lockstep latency ------------------------------------------------------


def echo_server(port: int, reply_bytes: dict[int, bytes]) -> None:
    """REP echo: answers a message of each request size with the matching reply size."""
    import zmq

    sock = zmq.Context().socket(zmq.REP)
    sock.bind(f"tcp://127.0.0.1:{port}")
    while True:
        message = sock.recv()
        sock.send(reply_bytes.get(len(message), message))


def median_us(call: Callable[[], object], count: int) -> float:
    perf = time.perf_counter
    samples = []
    for _ in range(count):
        t0 = perf()
        call()
        samples.append(perf() - t0)
    return statistics.median(samples) * 1e6


def lockstep_latency(node: str, redis_client: Any, count: int) -> dict[str, float]:
    """Median microseconds per get and per set: memlookup, redis-py, zmq echo; interleaved rounds."""
    import zmq

    from client import Client
    from common.protocol import encode_request, ok

    key = "key:000000000001"
    get_request = encode_request("get", key)
    set_request = encode_request("set", key, VALUE, options={"rid": "0123456789abcdef:1000000"})
    sizes = {len(get_request): ok(VALUE), len(set_request): ok(True)}
    port = free_port()
    echo = mp.get_context("fork").Process(target=echo_server, args=(port, sizes), daemon=True)
    echo.start()
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.setsockopt(zmq.LINGER, 0)

    def echo_call(frame: bytes) -> Callable[[], object]:
        return lambda: (sock.send(frame), sock.recv())

    rounds: dict[str, list[float]] = {}
    try:
        with Client(node, timeout_s=5, retries=0) as table:
            table.set(key, VALUE)
            redis_client.set(key, VALUE)
            cases = {
                "get memlookup": lambda: table.get(key),
                "get redis-py": lambda: redis_client.get(key),
                "get echo": echo_call(get_request),
                "set memlookup": lambda: table.set(key, VALUE),
                "set redis-py": lambda: redis_client.set(key, VALUE),
                "set echo": echo_call(set_request),
            }
            for call in cases.values():  # warm up: connections, caches
                median_us(call, 200)
            for _ in range(5):  # interleaved, so load changes hit every case
                for name, call in cases.items():
                    rounds.setdefault(name, []).append(median_us(call, count // 5))
    finally:
        sock.close()
        echo.kill()
    return {name: statistics.median(values) for name, values in rounds.items()}


# -- 2, 3. load generator runs ------------------------------------------------------


def bench(node: str, *extra: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench", node, "--json", "-q", *extra], cwd=ROOT,
                         check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def redis_benchmark(node: str, requests: int, keyspace: int, *shape: str) -> dict[str, float]:
    """redis-benchmark's get and set requests/s; ``shape`` replaces ``-c 16`` (no pipelining)."""
    port = node.rsplit(":", 1)[1]
    out = subprocess.run(["redis-benchmark", "-p", port, *(shape or ("-c", "16")), "-n", str(requests), "-d", "32",
                          "-r", str(keyspace), "-t", "get,set", "--csv"], check=True, capture_output=True,
                         text=True).stdout
    result = {}
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells[0] in ("GET", "SET"):
            result[cells[0].lower()] = float(cells[1])
    return result


# -- 4, 5. bulk load and memory ----------------------------------------------------


def write_load_files(directory: Path, pairs: int) -> tuple[Path, Path]:
    """The same pairs as CLI lines and as Redis protocol."""
    words, resp = directory / "load.txt", directory / "load.resp"
    with open(words, "w") as w, open(resp, "w") as r:
        for i in range(pairs):
            key = f"key:{i:012d}"
            w.write(f"set {key} {VALUE}\n")
            r.write(f"*3\r\n$3\r\nSET\r\n$16\r\n{key}\r\n$32\r\n{VALUE}\r\n")
    return words, resp


def bulk_and_memory(words: Path, resp: Path, pairs: int) -> dict[str, float]:
    result: dict[str, float] = {}
    with memlookup_server() as (node, proc):
        before = rss_bytes(proc.pid)
        with open(words, "rb") as source:
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "client", node, "--pipe"], stdin=source, cwd=ROOT,
                                  capture_output=True, text=True)
            result["pipe memlookup s"] = time.perf_counter() - t0
        if done.returncode != 0 or f"sent: {pairs}," not in done.stderr:
            raise RuntimeError(f"memlookup --pipe failed: {done.stderr[-500:]}")
        time.sleep(0.5)
        result["memory memlookup B/key"] = (rss_bytes(proc.pid) - before) / pairs
    with redis_server() as (node, client):
        before = client.info("memory")["used_memory"]
        with open(resp, "rb") as source:
            t0 = time.perf_counter()
            done = subprocess.run(["redis-cli", "-p", node.rsplit(":", 1)[1], "--pipe"], stdin=source,
                                  capture_output=True, text=True)
            result["pipe redis s"] = time.perf_counter() - t0
        if done.returncode != 0 or client.dbsize() != pairs:
            raise RuntimeError(f"redis-cli --pipe failed: {done.stdout[-500:]}")
        result["memory redis B/key"] = (client.info("memory")["used_memory"] - before) / pairs
    return result


# -- 6. one-shot CLI ------------------------------------------------------------------


def cli_wall(node: str, runs: int) -> dict[str, float]:
    from client import Client

    with Client(node) as table:
        table.set("norway", "oslo")
    # Bytecode as an installed package has it (pip compiles on install), even
    # where PYTHONDONTWRITEBYTECODE keeps a source checkout from caching it.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "client", "common"], cwd=ROOT, check=True)
    commands = {
        "cli get": [sys.executable, "-m", "client", node, "get", "norway"],
        "import zmq, msgpack": [sys.executable, "-c", "import zmq, msgpack"],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            t0 = time.perf_counter()
            subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) * 1e3 for name, values in samples.items()}


# -- the table -----------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores (nproc), {model}, Python {platform.python_version()}, {platform.system()}"


def measure(quick: bool) -> tuple[list[tuple[str, str, str, float, str, bool]], dict[str, Any]]:
    sizes = dict(latency=2_000, clients_n=8_000, redis_n=20_000, pairs=20_000, cli_runs=3) \
        if quick else dict(latency=20_000, clients_n=100_000, redis_n=200_000,
                           pairs=1_000_000, cli_runs=15)
    capacity_s = 1.0 if quick else 5.0
    keyspace = 100_000
    raw: dict[str, Any] = {"sizes": sizes}
    with memlookup_server() as (mnode, mproc), redis_server() as (rnode, rclient):
        lat = raw["latency_us"] = lockstep_latency(mnode, rclient, sizes["latency"])
        four = ["-c", "4", "-n", str(sizes["clients_n"]), "--mix", "get=50,set=50", "-r", str(keyspace)]
        raw["four memlookup"] = bench(mnode, *four)
        raw["four redis"] = bench(rnode, *four, "--target", "redis")
        raw["capacity memlookup"] = capacity.measure(mnode, clients=2, pipeline=64, per_message=16,
                                                     duration_s=capacity_s, keyspace=keyspace,
                                                     server_pid=mproc.pid)
        raw["redis-benchmark"] = redis_benchmark(rnode, sizes["redis_n"], keyspace)
        raw["redis-benchmark -P 64"] = redis_benchmark(rnode, sizes["redis_n"], keyspace, "-c", "2", "-P", "64")
        raw["cli_ms"] = cli_wall(mnode, sizes["cli_runs"])
    with tempfile.TemporaryDirectory() as tmp:
        words, resp = write_load_files(Path(tmp), sizes["pairs"])
        raw["bulk"] = bulk_and_memory(words, resp, sizes["pairs"])
    base = Path(tempfile.mkdtemp(prefix="bench-persistence-", dir=ROOT))  # the disk a data dir would use
    try:
        raw["restart_s"] = persistence.measure_restart(sizes["pairs"], 1 if quick else 3, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    rb = raw["redis-benchmark"]
    redis_capacity = statistics.mean([rb["get"], rb["set"]])
    bulk = raw["bulk"]
    rows = []

    def row(what: str, ours: float, theirs: float, unit: str, goal: str, lower_is_better: bool,
            limit: float, theirs_name: str) -> None:
        ratio = ours / theirs if theirs else float("inf")
        met = ratio <= limit if lower_is_better else ratio >= limit
        rows.append((what, f"{ours:,.1f} {unit}", f"{theirs:,.1f} {unit} ({theirs_name})", ratio, goal, met))

    for op in ("get", "set"):
        ours = lat[f"{op} memlookup"]
        row(f"1. lockstep {op}, median latency vs echo floor", ours, lat[f"{op} echo"], "us", "<= 1.10",
            True, 1.10, "pyzmq REQ/REP echo")
        row(f"1. lockstep {op}, median latency vs Redis", ours, lat[f"{op} redis-py"], "us", "<= 0.75",
            True, 0.75, "redis-py")
    row("2. four processes lockstep, get/set 50/50", raw["four memlookup"]["requests_per_s"],
        raw["four redis"]["requests_per_s"], "req/s", ">= 1.6", False, 1.6, "redis-py")
    row("3. capacity: -c 2 -P 64, 16 per batch message, vs redis-benchmark -c 16",
        raw["capacity memlookup"]["requests_per_s"], redis_capacity, "req/s", ">= 1.0", False, 1.0,
        "redis-benchmark get/set mean")
    row(f"4. bulk load of {sizes['pairs']:,} pairs", bulk["pipe memlookup s"], bulk["pipe redis s"], "s",
        "<= 1.0", True, 1.0, "redis-cli --pipe")
    row(f"5. memory per key at {sizes['pairs']:,} keys", bulk["memory memlookup B/key"],
        bulk["memory redis B/key"], "B", "<= 0.6", True, 0.6, "Redis used_memory")
    row("6. one-shot CLI get, wall time", raw["cli_ms"]["cli get"], raw["cli_ms"]["import zmq, msgpack"], "ms",
        "<= 1.15", True, 1.15, 'python -c "import zmq, msgpack"')
    restart = raw["restart_s"]
    for source in ("snapshot", "journal"):
        row(f"7. restart with {sizes['pairs']:,} keys, from the {source}", restart[source], restart["redis"], "s",
            "<= 1.0", True, 1.0, "Redis from its AOF")
    return rows, raw


def render(rows: list[tuple[str, str, str, float, str, bool]], raw: dict[str, Any], command: str) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}` on "
        f"{machine()}; Redis {raw.get('redis_version', '')}. Every pair in one run, on the same machine, "
        "which other jobs may have been loading: read the ratios, not the absolute numbers.",
        "",
        "| workload | memlookup | compared with | ratio | goal | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for what, ours, theirs, ratio, goal, met in rows:
        lines.append(f"| {what} | {ours} | {theirs} | {ratio:.2f} | {goal} | {'yes' if met else 'no'} |")
    four, cap, lat = raw["four memlookup"], raw["capacity memlookup"], raw["latency_us"]
    for op in ("get", "set"):
        goal_us, floor_us = 0.75 * lat[f"{op} redis-py"], lat[f"{op} echo"]
        if goal_us < floor_us:
            lines += ["", f"Row 1's {op} goal against redis-py, 0.75 x {lat[f'{op} redis-py']:.1f} = {goal_us:.1f} us, "
                          f"is below the pyzmq REQ/REP echo of the same messages in this run ({floor_us:.1f} us): "
                          "no client of pyzmq's REQ socket can meet it."]
    lines += [
        "",
        "Latency percentiles from the load generator (us): "
        f"four lockstep clients p50 {four['latency_us']['p50']:.0f}, p99 {four['latency_us']['p99']:.0f}, "
        f"p99.9 {four['latency_us']['p99_9']:.0f}; redis-py p50 {raw['four redis']['latency_us']['p50']:.0f}, "
        f"p99 {raw['four redis']['latency_us']['p99']:.0f}.",
        "",
        f"redis-benchmark -c 16: GET {raw['redis-benchmark']['get']:,.0f} req/s, "
        f"SET {raw['redis-benchmark']['set']:,.0f} req/s. Row 3's server used {cap['server_cpu']:.2f} of a core "
        f"(bench.capacity). For scale, Redis pipelined as row 3 is (redis-benchmark -c 2 -P 64): "
        f"GET {raw['redis-benchmark -P 64']['get']:,.0f} req/s, SET {raw['redis-benchmark -P 64']['set']:,.0f} req/s.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str, doc: Path = DOC) -> None:
    """Replace the ``## Speed`` section (up to the next ``## `` heading), keeping the rest."""
    old = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text + "\n", old)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    parser.add_argument("--no-write", action="store_true", help=f"print the table; leave {DOC.name} alone")
    parser.add_argument("--doc", type=Path, default=DOC, help="the document to write (default: docs/BENCHMARKS.md)")
    args = parser.parse_args(argv)
    ensure_redis()
    rows, raw = measure(args.quick)
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v=(\S+)", version) or re.search(r"(\S+)", version)
    raw["redis_version"] = found.group(1) if found else "?"
    command = "python3 -m bench.compare" + (" --quick" if args.quick else "")
    text = render(rows, raw, command)
    print(text)
    if not args.no_write:
        write_section(text, args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
