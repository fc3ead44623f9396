"""Persistence figures, side by side in one run: memlookup against Redis.

    python3 bench/persistence.py engines      # SQLite WAL vs the journal, no server
    python3 bench/persistence.py writes       # 16 writers: always vs Redis always; everysec vs in memory
    python3 bench/persistence.py restart      # restart with 1M keys vs Redis loading its AOF
    python3 bench/persistence.py stall        # one writer's latency while 1M keys are compacted
    python3 bench/persistence.py pause        # a compaction's start pause with 10,000 remembered replies
    python3 bench/persistence.py cpu          # CPU per write in the handler and journal, no sockets
    python3 bench/persistence.py all

    # the same figures for another source tree too (e.g. ``git archive`` of an
    # older commit), run side by side: its rows are marked "(baseline)"
    python3 bench/persistence.py writes --modes always --baseline /tmp/old-tree

Needs ``redis-server`` and ``redis-benchmark`` (Debian: redis-server) for the
Redis side. The writers send a request id with every ``set``, as the Python
client does (the server remembers, and with a data dir journals, its reply).
Every server runs on a free loopback port with its data in a temporary
directory under the current directory's file system (same disk as Redis gets).
Results are medians of ``--repeat`` runs, printed as ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import msgpack
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import ServerProcess  # noqa: E402

CLIENTS = 16
DRIVER_PROCESSES = 2
KEY_SPACE = 1_000_000
VALUE = "v" * 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- load generator: CLIENTS REQ sockets, one request in flight each (like redis-benchmark -c) --


def _drive_part(node: str, sockets: int, seconds: float, seed: int, out: multiprocessing.Queue[int]) -> None:
    context = zmq.Context()
    poller = zmq.Poller()
    reqs = []
    for _ in range(sockets):
        sock = context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{node}")
        poller.register(sock, zmq.POLLIN)
        reqs.append(sock)
    counter = seed * 7919
    keys = [f"key:{(counter + i) % KEY_SPACE:012d}" for i in range(4096)]
    client_id = os.urandom(8).hex()  # one per process; the sequence makes each rid unique, as the client's
    packb = msgpack.packb

    def request(n: int) -> bytes:
        return packb(["set", keys[n & 4095], VALUE, {"rid": f"{client_id}:{n}"}])

    for i, sock in enumerate(reqs):
        sock.send(request(i))
    done = 0
    sent = len(reqs)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for sock, _ in poller.poll(1000):
            reply = sock.recv()
            if reply[1:2] != b"\x00":  # [0, payload]: status OK
                raise SystemExit(f"error reply: {msgpack.unpackb(reply)}")
            done += 1
            sock.send(request(sent))
            sent += 1
    out.put(done)
    context.destroy(linger=0)


def drive(node: str, seconds: float) -> float:
    """Requests per second that CLIENTS concurrent writers get from ``node``."""
    queue: multiprocessing.Queue[int] = multiprocessing.Queue()
    per = CLIENTS // DRIVER_PROCESSES
    procs = [
        multiprocessing.Process(target=_drive_part, args=(node, per, seconds, i, queue))
        for i in range(DRIVER_PROCESSES)
    ]
    for proc in procs:
        proc.start()
    total = sum(queue.get(timeout=seconds + 30) for _ in procs)
    for proc in procs:
        proc.join()
    return total / seconds


# -- Redis ------------------------------------------------------------------------


class Redis:
    def __init__(self, data_dir: Path, fsync: str) -> None:
        self.port = free_port()
        self.dir = data_dir
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data_dir),
             "--appendonly", "yes", "--appendfsync", fsync, "--save", "", "--auto-aof-rewrite-percentage", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.ready_s = wait_redis_ready(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def wait_redis_ready(port: int, timeout_s: float = 120.0) -> float:
    """Seconds until Redis answers PING with PONG (not -LOADING)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError("redis did not become ready")


def redis_benchmark_sets(port: int, requests: int) -> float:
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", str(CLIENTS), "-t", "set", "-n", str(requests),
         "-d", "32", "-r", str(KEY_SPACE), "--csv", "-q"],
        capture_output=True, text=True, check=True,
    ).stdout
    row = next(line for line in out.splitlines() if line.startswith('"SET"'))
    return float(row.split(",")[1].strip('"'))


# -- memlookup ------------------------------------------------------------------------


def memlookup(args: list[str], tree: Path | None = None) -> ServerProcess:
    """A server of this tree, or of the source tree ``tree`` (for a baseline)."""
    program = None
    if tree is not None:
        program = [sys.executable, "-c",
                   f"import sys; sys.path.insert(0, {str(tree)!r}); from server.__main__ import main; sys.exit(main())"]
    return ServerProcess(args, start_timeout_s=300, program=program)


def journal_bytes_per_write(node: str) -> float:
    """Journal bytes the server wrote per ``set`` so far (its stats; no compaction may have run)."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{node}")
    sock.send(msgpack.packb(["stats"]))
    stats = msgpack.unpackb(sock.recv())[1]
    sock.close()
    persistence = stats["persistence"]
    if persistence["compactions"] or persistence["generation"] != 1:
        raise RuntimeError("a compaction ran: the journal no longer holds every write")
    journal_bytes: int = persistence["journal_bytes"]
    sets: int = stats["ops"]["set"]
    return journal_bytes / sets


def wait_memlookup_ready(node: str, timeout_s: float = 300.0) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{node}")
    sock.send(msgpack.packb(["ping"]))
    if not sock.poll(int(timeout_s * 1000)):
        raise RuntimeError("memlookup did not answer")
    sock.recv()
    sock.close()


# -- the figures ------------------------------------------------------------------------


def bench_writes(seconds: float, repeat: int, base: Path, modes: list[str], baseline: Path | None) -> None:
    runs: list[tuple[str, Path | None]] = [(mode, None) for mode in modes]
    if baseline is not None:
        runs += [(mode, baseline) for mode in modes if mode in ("always", "everysec", "in memory")]
    label = {run: run[0] + (" (baseline)" if run[1] else "") for run in runs}
    results: dict[tuple[str, Path | None], list[float]] = {run: [] for run in runs}
    per_write: dict[tuple[str, Path | None], list[float]] = {run: [] for run in runs}
    for _ in range(repeat):
        for run in runs:  # interleaved, so that a slow moment of the disk hits every row alike
            name, tree = run
            data = Path(tempfile.mkdtemp(dir=base))
            try:
                if name == "redis always":
                    redis = Redis(data, "always")
                    try:
                        results[run].append(redis_benchmark_sets(redis.port, int(seconds * 40_000)))
                    finally:
                        redis.stop()
                    continue
                args = [] if name == "in memory" else ["--data-dir", str(data), "--fsync", name]
                server = memlookup(args, tree)
                try:
                    results[run].append(drive(server.node, seconds))
                    if name != "in memory":
                        per_write[run].append(journal_bytes_per_write(server.node))
                finally:
                    server.stop()
            finally:
                shutil.rmtree(data, ignore_errors=True)
    med = {label[run]: statistics.median(values) for run, values in results.items()}
    print(f"sets/s, {CLIENTS} concurrent writers, median of {repeat}:")
    for run, values in results.items():
        extra = f"   journal bytes/write {statistics.median(per_write[run]):6.1f}" if per_write[run] else ""
        print(f"  {label[run]:25s} {med[label[run]]:10,.0f}{extra}   runs: {', '.join(f'{v:,.0f}' for v in values)}")
    for mine, theirs in (("always", "redis always"), ("everysec", "in memory"), ("always", "always (baseline)"),
                         ("everysec", "everysec (baseline)")):
        if mine in med and theirs in med:
            print(f"  {mine} / {theirs} = {med[mine] / med[theirs]:.2f}x")


def _resp(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _fill_memlookup(data: Path, names: list[str], values: list[str], tree: Path | None) -> None:
    server = memlookup(["--data-dir", str(data), "--fsync", "everysec", "--compact-after-bytes", str(1 << 40)], tree)
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    sock.connect(f"tcp://{server.node}")
    for start in range(0, len(names), 1000):
        page = dict(zip(names[start:start + 1000], values[start:start + 1000], strict=True))
        sock.send(msgpack.packb(["mset", page]))
        sock.recv()
    sock.close()
    server.stop()


def _compact_memlookup(data: Path, tree: Path | None) -> tuple[float, float]:
    """One start with a tiny threshold, one write to trigger a compaction: its pause in ms, and the seconds
    from the write's reply to the compaction done (snapshot written, fsynced and renamed; polled every 20 ms)."""
    server = memlookup(["--data-dir", str(data), "--fsync", "everysec", "--compact-after-bytes", "1"], tree)
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    sock.connect(f"tcp://{server.node}")
    sock.send(msgpack.packb(["set", "trigger", "x"]))
    sock.recv()
    started = time.perf_counter()
    while True:
        time.sleep(0.02)
        sock.send(msgpack.packb(["stats"]))
        stats = msgpack.unpackb(sock.recv())[1]["persistence"]
        if stats["compactions"] >= 1 and not stats["compacting"]:
            break
    took_s = time.perf_counter() - started
    sock.close()
    server.stop()
    pause_ms: float = stats["last_compaction_pause_ms"]
    return pause_ms, took_s


def _time_start(data: Path, tree: Path | None) -> float:
    """Seconds from starting the server on ``data`` to its first reply (its own fsync policy: everysec)."""
    started = time.perf_counter()
    server = memlookup(["--data-dir", str(data), "--fsync", "everysec"], tree)
    wait_memlookup_ready(server.node)
    took = time.perf_counter() - started
    server.stop()
    return took


def bench_restart(keys: int, repeat: int, base: Path, baseline: Path | None) -> None:
    measure_restart(keys, repeat, base, baseline, show=True)


def measure_restart(keys: int, repeat: int, base: Path, baseline: Path | None = None,
                    show: bool = False) -> dict[str, float]:
    """Restart with ``keys`` keys, start to first reply, median of ``repeat``: this tree's server from
    its journal and from its snapshot, and Redis from its AOF; returns those three medians in seconds
    (``journal``, ``snapshot``, ``redis``), and prints the details when ``show``."""
    names = [f"key:{i:012d}" for i in range(keys)]  # 16 bytes
    values = [f"value:{i:026d}" for i in range(keys)]  # 32 bytes
    trees: list[Path | None] = [None] + ([baseline] if baseline is not None else [])
    label = {tree: "memlookup" + (" (baseline)" if tree else "") for tree in trees}
    ours = {tree: Path(tempfile.mkdtemp(dir=base)) for tree in trees}
    theirs = Path(tempfile.mkdtemp(dir=base))
    journal: dict[Path | None, list[float]] = {tree: [] for tree in trees}
    snapshot: dict[Path | None, list[float]] = {tree: [] for tree in trees}
    try:
        for tree in trees:
            _fill_memlookup(ours[tree], names, values, tree)
        redis = Redis(theirs, "everysec")
        with socket.create_connection(("127.0.0.1", redis.port)) as conn:
            for start in range(0, keys, 1000):
                conn.sendall(b"".join(_resp("SET", names[i], values[i]) for i in range(start, min(keys, start + 1000))))
                want = min(keys, start + 1000) - start
                got = b""
                while got.count(b"\r\n") < want:
                    got += conn.recv(1 << 16)
        redis.stop()
        for _ in range(repeat):  # interleaved, as the writes figure
            for tree in trees:
                journal[tree].append(_time_start(ours[tree], tree))
        files_j = {tree: {p.name: p.stat().st_size for p in ours[tree].iterdir()} for tree in trees}
        compactions = {tree: _compact_memlookup(ours[tree], tree) for tree in trees}
        for _ in range(repeat):
            for tree in trees:
                snapshot[tree].append(_time_start(ours[tree], tree))
        files_s = {tree: {p.name: p.stat().st_size for p in ours[tree].iterdir()} for tree in trees}
        redis_times = []
        for _ in range(repeat):
            redis = Redis(theirs, "everysec")
            redis_times.append(redis.ready_s)
            redis.stop()
        aof = sum(p.stat().st_size for p in (theirs / "appendonlydir").iterdir())
    finally:
        for path in [*ours.values(), theirs]:
            shutil.rmtree(path, ignore_errors=True)
    mr = statistics.median(redis_times)
    medians = {"journal": statistics.median(journal[None]), "snapshot": statistics.median(snapshot[None]),
               "redis": mr}
    if not show:
        return medians
    print(f"restart with {keys:,} keys (16-byte keys, 32-byte values), start to first reply, median of {repeat}:")
    for tree in trees:
        mj, ms = statistics.median(journal[tree]), statistics.median(snapshot[tree])
        print(f"  {label[tree]} from journal  {mj:6.2f} s  runs {', '.join(f'{t:.2f}' for t in journal[tree])}"
              f"  files {files_j[tree]}")
        print(f"  {label[tree]} from snapshot {ms:6.2f} s  runs {', '.join(f'{t:.2f}' for t in snapshot[tree])}"
              f"  files {files_s[tree]}")
        print(f"  {label[tree]}: journal / redis = {mj / mr:.2f}x   snapshot / redis = {ms / mr:.2f}x")
        pause_ms, compaction_s = compactions[tree]
        print(f"  {label[tree]}: compaction with {keys:,} keys: {compaction_s:.2f} s to write the snapshot; pause"
              f" (new journal, or the longest snapshot slice) {pause_ms:.1f} ms")
    print(f"  redis from AOF          {mr:6.2f} s  AOF {aof} bytes")
    return medians


def _pause_with_replies(data: Path, tree: Path | None) -> tuple[float, float, int]:
    """Write 1000-set batches, each set with its own rid, until a compaction ran; its start
    pause and longest slice in ms (from the server's log), and how many writes it took."""
    server = memlookup(["--data-dir", str(data), "--fsync", "everysec", "--compact-after-bytes", "3000000",
                        "--log-level", "info"], tree)
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    sock.connect(f"tcp://{server.node}")
    client_id, n = os.urandom(8).hex(), 0
    try:
        while True:
            items = []
            for _ in range(1000):
                n += 1
                items.append(["set", f"key:{n % 5000}", "v" * 100, {"rid": f"{client_id}:{n}"}])
            sock.send(msgpack.packb(["batch", items]))
            sock.recv()
            sock.send(msgpack.packb(["stats"]))
            stats = msgpack.unpackb(sock.recv())[1]["persistence"]
            if stats["compactions"] >= 1 and not stats["compacting"]:
                break
        server.wait_for_log("longest slice")
    finally:
        sock.close()
        server.stop()
    started_ms = _logged_ms(server.log, r"compaction \d+ started \(paused ([\d.]+) ms\)")
    longest_ms = _logged_ms(server.log, r"longest slice ([\d.]+) ms")
    return started_ms, longest_ms, n


def _logged_ms(log: str, pattern: str) -> float:
    """The number ``pattern``'s group 1 finds in a server's log."""
    match = re.search(pattern, log)
    if match is None:
        raise RuntimeError(f"no line of the server's log matches {pattern!r}")
    return float(match.group(1))


def bench_pause(repeat: int, base: Path, baseline: Path | None) -> None:
    """The pause a compaction's start causes once 10,000 write replies are remembered."""
    trees: list[Path | None] = [None] + ([baseline] if baseline is not None else [])
    found: dict[Path | None, list[tuple[float, float, int]]] = {tree: [] for tree in trees}
    for _ in range(repeat):
        for tree in trees:
            data = Path(tempfile.mkdtemp(dir=base))
            try:
                found[tree].append(_pause_with_replies(data, tree))
            finally:
                shutil.rmtree(data, ignore_errors=True)
    print(f"compaction with 10,000 remembered replies (batches of 1000 sets with rids, everysec), median of {repeat}:")
    for tree in trees:
        starts, slices = [f[0] for f in found[tree]], [f[1] for f in found[tree]]
        print(f"  {'memlookup' + (' (baseline)' if tree else ''):22s} start pause {statistics.median(starts):5.1f} ms"
              f"  (runs {', '.join(f'{v:.1f}' for v in starts)})   longest slice {statistics.median(slices):5.1f} ms")


#: Run in a child with the tree to measure first on sys.path: CPU seconds per write
#: through the real Handler, JournaledStore and Persistence (fsync no), without sockets.
_CPU_CHILD = """
import importlib.util, json, os, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import msgpack
from server.config import ServerConfig
data_dir = tempfile.mkdtemp(dir=sys.argv[2])
if importlib.util.find_spec("server.app") is not None:  # the server as server/app.py assembles it
    from server.app import build_server
    app = build_server(ServerConfig(port=0, data_dir=data_dir, fsync="no"))
    handle, before_reply, close = app.server.hooks.handle, app.server.hooks.before_reply, app.close
else:  # a baseline tree from before server/app.py
    from server.handler import Handler
    from server.journaled_store import JournaledStore
    from server.loop import Server
    from server.persistence import Persistence
    store = JournaledStore()
    persistence = Persistence(data_dir, "no", store)
    persistence.open()
    server = Server(ServerConfig(port=0), Handler(store))
    persistence.attach(server)
    handle, before_reply = server.handler.handle, persistence.before_reply
    def close():
        server.socket.close(linger=0)
        persistence.close()
client_id = os.urandom(8).hex()
frames = [msgpack.packb(["set", f"key:{i % 100000:012d}", "v" * 32, {"rid": f"{client_id}:{i}"}])
          for i in range(200_000)]
result = {}
for batch in (1, 16):
    started = time.process_time()
    for start in range(0, len(frames), batch):
        for frame in frames[start:start + batch]:
            handle(frame)
        before_reply(batch)
    result[batch] = (time.process_time() - started) / len(frames) * 1e6
    frames = [msgpack.packb(["set", f"key:{i % 100000:012d}", "v" * 32, {"rid": f"{client_id}:b{i}"}])
              for i in range(200_000)]
close()
print(json.dumps(result))
"""


def bench_cpu(repeat: int, base: Path, baseline: Path | None) -> None:
    """CPU microseconds per write in the handler and the journal, no sockets: what the server's
    own code costs, apart from the noise of ZeroMQ, the scheduler and the disk."""
    trees: list[Path | None] = [None] + ([baseline] if baseline is not None else [])
    found: dict[Path | None, dict[str, list[float]]] = {tree: {"1": [], "16": []} for tree in trees}
    for _ in range(repeat):
        for tree in trees:
            out = subprocess.run([sys.executable, "-c", _CPU_CHILD, str(tree or ROOT), str(base)],
                                 capture_output=True, text=True, check=True).stdout
            for batch, micros in json.loads(out).items():
                found[tree][batch].append(micros)
    print(f"CPU per write (set with rid, fsync no, no sockets), median of {repeat}:")
    for tree in trees:
        parts = [f"batches of {batch:>2s}: {statistics.median(values):5.2f} us"
                 for batch, values in found[tree].items()]
        print(f"  {'memlookup' + (' (baseline)' if tree else ''):22s} {'   '.join(parts)}")


def bench_stall(keys: int, base: Path) -> None:
    """Latency of one writer while a compaction of ``keys`` keys runs, against the same run before it."""
    data = Path(tempfile.mkdtemp(dir=base))
    server = memlookup(["--data-dir", str(data), "--compact-after-bytes", str(1 << 40)])
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.connect(f"tcp://{server.node}")
    for start in range(0, keys, 1000):
        sock.send(msgpack.packb(["mset", {f"key:{i:012d}": f"value:{i:026d}" for i in range(start, start + 1000)}]))
        sock.recv()
    sock.close()
    server.stop()
    journal_bytes = sum(p.stat().st_size for p in data.glob("journal.*"))
    # The journal crosses the threshold after a few seconds of overwrites.
    server = memlookup(["--data-dir", str(data), "--compact-after-bytes", str(journal_bytes + 4_000_000)])
    sock = context.socket(zmq.REQ)
    sock.connect(f"tcp://{server.node}")

    def call(*request: object) -> Any:
        """The reply's payload, as msgpack decodes it."""
        sock.send(msgpack.packb(list(request)))
        return msgpack.unpackb(sock.recv())[1]

    before: list[float] = []
    during: list[float] = []
    i = 0
    stats = call("stats")["persistence"]
    while True:
        started = time.perf_counter()
        call("set", f"key:{i % keys:012d}", "x" * 60)
        (during if stats["compactions"] or stats["compacting"] else before).append(time.perf_counter() - started)
        i += 1
        if i % 200 == 0:
            stats = call("stats")["persistence"]
            if stats["compactions"] >= 1:
                break
    sock.close()
    server.stop()
    shutil.rmtree(data, ignore_errors=True)

    def describe(values: list[float]) -> str:
        values = sorted(values)

        def pick(q: float) -> float:
            return values[min(len(values) - 1, int(len(values) * q))] * 1000

        return (f"{len(values):7,d} writes  p50 {pick(0.5):5.2f} ms  p99 {pick(0.99):5.2f} ms  "
                f"p99.9 {pick(0.999):6.2f} ms  max {values[-1] * 1000:7.2f} ms")

    print(f"one writer (everysec) before and during a compaction of {keys:,} keys:")
    print(f"  before  {describe(before)}")
    print(f"  during  {describe(during)}")
    print("  the server's own longest pause (new journal, or one snapshot slice): "
          f"{stats['last_compaction_pause_ms']:.1f} ms")


def bench_engines(batches: int = 2000, batch: int = 16) -> None:
    """The two engines without a server: per-batch cost and loading 1M entries."""

    def rows_of(b: int) -> list[tuple[str, str, None]]:
        return [(f"key:{(b * batch + i) % 5000:012d}", VALUE, None) for i in range(batch)]

    base = Path(tempfile.mkdtemp(dir=ROOT))
    try:
        for sync in ("FULL", "NORMAL"):
            db = sqlite3.connect(base / f"s{sync}.db", isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={sync}")
            db.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT, d REAL) WITHOUT ROWID")
            started = time.perf_counter()
            for b in range(batches):
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO kv VALUES(?,?,?)", rows_of(b))
                db.execute("COMMIT")
            took = time.perf_counter() - started
            print(f"sqlite WAL synchronous={sync:6s}: {took / batches * 1e6:6.0f} us per batch of {batch} writes")
            db.close()
        fd = os.open(base / "j.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        for fdatasync in (True, False):
            started = time.perf_counter()
            for b in range(batches):
                payload = msgpack.packb(rows_of(b))
                head = struct.pack("<II", len(payload), zlib.crc32(payload))
                os.write(fd, head + zlib.crc32(head).to_bytes(4, "little") + payload)
                if fdatasync:
                    os.fdatasync(fd)
            took = time.perf_counter() - started
            print(f"journal fdatasync={fdatasync!s:5s}     : "
                  f"{took / batches * 1e6:6.0f} us per batch of {batch} writes")
        os.close(fd)
        n = 1_000_000
        db = sqlite3.connect(base / "big.db", isolation_level=None)
        db.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT, d REAL) WITHOUT ROWID")
        db.execute("BEGIN")
        db.executemany("INSERT INTO kv VALUES(?,?,?)", ((f"key:{i:012d}", VALUE, None) for i in range(n)))
        db.execute("COMMIT")
        db.close()
        started = time.perf_counter()
        table = {k: v for k, v, _ in sqlite3.connect(base / "big.db").execute("SELECT k, v, d FROM kv")}
        print(f"sqlite: load {len(table):,} rows into a dict: {time.perf_counter() - started:.2f} s")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("engines", "writes", "restart", "stall", "pause", "cpu", "all"))
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported")
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys for the restart figure")
    parser.add_argument("--modes", default="always,redis always,everysec,in memory",
                        help="comma-separated rows of the writes figure (default: all four)")
    parser.add_argument("--baseline", type=Path, metavar="TREE",
                        help="also run the memlookup rows with the server of this source tree, side by side")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-persistence-", dir=ROOT))
    try:
        if args.what in ("engines", "all"):
            bench_engines()
        if args.what in ("writes", "all"):
            bench_writes(args.seconds, args.repeat, base, args.modes.split(","), args.baseline)
        if args.what in ("restart", "all"):
            bench_restart(args.keys, args.repeat, base, args.baseline)
        if args.what in ("stall", "all"):
            bench_stall(args.keys, base)
        if args.what in ("pause", "all"):
            bench_pause(args.repeat, base, args.baseline)
        if args.what in ("cpu", "all"):
            bench_cpu(args.repeat, base, args.baseline)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
