"""Jepsen-style histories: concurrent clients record what they did, and a checker judges it.

Recording (:func:`record`). Worker processes (started with ``spawn``), each
running several threads, send random operations -- ``set`` with values
nobody else writes, ``get``, ``del``, ``cas``, ``incr``, ``mset``, ``mget`` --
on a few keys, through every way a program can talk to memlookup: a
:class:`Client` shared by two threads, a Client of its own, a
:class:`Pipeline`, a raw DEALER socket sending ``batch`` messages, asyncio
tasks sharing an :class:`AsyncClient`, or a :class:`ClusterClient` (and
tasks sharing an :class:`AsyncClusterClient`). Each call becomes an :class:`Op`: what was asked, when
the call started and ended (``time.monotonic``, one clock for every process on
Linux) and what came back: a result (``ok``), an error meaning it did not
happen (``fail``), or no answer (``info``: it may or may not have happened, at
any time after it started). Reply shapes are checked as replies arrive.

Checking (:func:`check`), per key, as Knossos does:

* Registers (``set``/``get``/``del``/``cas``, and ``mset``/``mget`` split per
  key) and counters (``incr``/``get``) are checked for linearizability against
  a model of one key: a search for an order of the operations that respects
  real time (an operation that ended before another started comes first) and
  in which every result is what the model gives (Wing & Gong's search with
  Lowe's memoisation, as in Porcupine). ``info`` operations may take effect at
  any point after their start, or never; ``fail`` ones never. So a write
  answered with an error must never be seen, an acknowledged one must be seen
  by every later read, and every ``incr`` counts exactly once.
* Under an eviction policy a key may vanish at any moment: the model allows a
  spontaneous delete before any operation, and nothing else.
* :func:`check` can instead judge what holds when a cluster node fails
  (``linearizable=False``): no read returns a value that no write of that key
  had started to write by then (no phantoms), plus the checks below.
* Always: every reply has the shape of its request, no request gets an extra
  reply, and no error other than those allowed (timeouts, and what the mode
  allows, such as ``OutOfMemoryError``) is raised.

The default sizes keep each history to a few hundred operations per key,
which the search handles in well under a second.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import multiprocessing
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

from client import AsyncClient, AsyncClusterClient, Client, ClusterClient
from client.requests import result as reply_result
from common.errors import MemlookupError, NodeUnavailableError
from common.protocol import encode_batch, encode_request

OK, FAIL, INFO = "ok", "fail", "info"

#: Errors that mean "no answer": the operation may or may not have happened.
TIMEOUTS = ("NodeUnavailableError", "AuthenticationError")

#: Most steps the linearizability search may take for one key before the key
#: is reported as undecided (an anomaly too: the test must be made smaller).
SEARCH_BUDGET = 3_000_000


@dataclass(frozen=True)
class Op:
    """One call as its client saw it.

    ``args``: set (key, value); get/del (key,); cas (key, expected, value);
    incr (key, delta); mset ((key, value), ...); mget ((key, ...),).
    ``end`` is ``math.inf`` when no answer came. ``result`` is the result, or
    for fail/info ``"ErrorClass: message"``.
    """

    worker: str
    op: str
    args: tuple[Any, ...]
    start: float
    end: float
    outcome: str
    result: Any = None


@dataclass(frozen=True)
class Workload:
    """What the workers do. Picklable: it travels to the worker processes.

    ``kinds``: one worker thread per entry, in each process: ``client``
    (lockstep, on a Client shared by the process's ``client`` threads),
    ``own`` (a Client of its own), ``pipeline`` (pipelines on the shared
    Client), ``batch`` (a raw DEALER sending ``batch`` messages), ``cluster``
    (a ClusterClient shared by the process's ``cluster`` threads), ``async``
    (an asyncio task instead of a thread: the process's ``async`` tasks run
    on one event loop, in a thread of its own, and share one AsyncClient, or
    AsyncClusterClient with several nodes).
    """

    nodes: tuple[str, ...]
    kinds: tuple[str, ...] = ("client", "client", "own", "pipeline", "batch", "async", "async")
    processes: int = 2
    duration_s: float = 2.0
    max_ops: int = 80
    registers: int = 4
    counters: int = 2
    timeout_s: float = 2.0
    retries: int = 2
    replicas: int = 2
    dead_for_s: float = 0.5
    ttl_s: float | None = None
    server_key: str | None = None
    client_key: str | None = None
    prefix: str = "h"
    seed: int = 0

    @property
    def register_keys(self) -> list[str]:
        return [f"{self.prefix}:r{i}" for i in range(self.registers)]

    @property
    def counter_keys(self) -> list[str]:
        return [f"{self.prefix}:c{i}" for i in range(self.counters)]

    def client(self, awaiting: bool = False) -> Any:
        """A new Client (one node) or ClusterClient (several) for this workload; ``awaiting``: their asyncio kind."""
        if len(self.nodes) == 1:
            return (AsyncClient if awaiting else Client)(
                self.nodes[0], timeout_s=self.timeout_s, retries=self.retries,
                server_key=self.server_key, client_key=self.client_key)
        return (AsyncClusterClient if awaiting else ClusterClient)(
            list(self.nodes), replicas=self.replicas, timeout_s=self.timeout_s, retries=self.retries,
            dead_for_s=self.dead_for_s, server_key=self.server_key, client_key=self.client_key)


@dataclass
class History:
    """Everything the workers recorded, and the anomalies they saw as replies came."""

    ops: list[Op] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)


# -- recording ---------------------------------------------------------------------------


class _Chooser:
    """Random operations for one worker: values unique to it, ``cas`` expecting what it saw last."""

    def __init__(self, workload: Workload, tag: str, rng: random.Random) -> None:
        self.registers = workload.register_keys
        self.counters = workload.counter_keys
        self.tag = tag
        self.rng = rng
        self.count = 0
        self.seen: dict[str, str] = {}

    def _value(self) -> str:
        self.count += 1
        return f"{self.tag}.{self.count}"

    def next(self) -> tuple[str, tuple[Any, ...]]:
        rng, registers = self.rng, self.registers
        roll = rng.random()
        key = rng.choice(registers)
        if roll < 0.22:
            return "set", (key, self._value())
        if roll < 0.42:
            return "get", (rng.choice(registers + self.counters),)
        if roll < 0.50:
            return "del", (key,)
        if roll < 0.62:
            expected = self.seen.get(key) or f"{self.tag}.{rng.randrange(1, self.count + 2)}"
            return "cas", (key, expected, self._value())
        if roll < 0.77:
            return "incr", (rng.choice(self.counters), rng.randrange(1, 1_000_000))
        if roll < 0.87:
            value = self._value()
            return "mset", (tuple((k, f"{value}/{k[-2:]}") for k in rng.sample(registers, 2)),)
        return "mget", (tuple(rng.sample(registers + self.counters, 3)),)

    def saw(self, op: str, args: tuple[Any, ...], result: Any) -> None:
        """Remember values read or written, so that ``cas`` sometimes expects the right one."""
        if op == "get" and isinstance(result, str):
            self.seen[args[0]] = result
        elif op == "set" or (op == "cas" and result is True):
            self.seen[args[0]] = args[-1]
        elif op == "mget" and isinstance(result, list):
            self.seen.update((k, v) for k, v in zip(args[0], result, strict=True) if isinstance(v, str))


def _shape_problem(op: str, args: tuple[Any, ...], result: Any) -> str | None:
    """Why ``result`` is not the shape of an answer to ``op``, or None."""
    if op == "set":
        good = result is True
    elif op == "get":
        good = result is None or isinstance(result, str)
    elif op in ("del", "cas"):
        good = isinstance(result, bool)
    elif op == "incr":
        good = isinstance(result, int) and not isinstance(result, bool)
    elif op == "mset":
        good = result is None or result is True  # Client.mset returns None, a pipeline's True
    else:  # mget
        good = (isinstance(result, list) and len(result) == len(args[0])
                and all(v is None or isinstance(v, str) for v in result))
    return None if good else f"{op}{args!r:.120} answered {result!r:.120}"


def _failure(exc: BaseException) -> tuple[str, str]:
    """(outcome, "Class: message") for an exception a call raised."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, NodeUnavailableError):
        return INFO, text
    if isinstance(exc, MemlookupError):
        return FAIL, text
    return INFO, "unexpected " + text  # not a memlookup error at all: always an anomaly


def _call(table: Any, op: str, args: tuple[Any, ...], ttl_s: float | None) -> Any:
    """Run one operation on a Client, ClusterClient or Pipeline (or start it on an asyncio client)."""
    if op == "set":
        return table.set(args[0], args[1], ttl_s=ttl_s)
    if op == "get":
        return table.get(args[0])
    if op == "del":
        return table.delete(args[0])
    if op == "cas":
        return table.cas(args[0], args[1], args[2], ttl_s=ttl_s)
    if op == "incr":
        return table.incr(args[0], args[1])
    if op == "mset":
        return table.mset(dict(args[0]), ttl_s=ttl_s)
    return table.mget(list(args[0]))


def _options(op: str, ttl_s: float | None, rid: str) -> dict[str, Any] | None:
    if op not in ("set", "del", "cas", "incr", "mset"):
        return None
    options: dict[str, Any] = {"rid": rid}
    if ttl_s is not None and op in ("set", "cas", "mset"):
        options["ttl_s"] = ttl_s
    return options


def _request_args(op: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    if op == "mset":
        return (dict(args[0]),)
    if op == "mget":
        return (list(args[0]),)
    return args


class _Worker:
    """One thread's loop: choose, call, record, until the deadline or ``max_ops``."""

    def __init__(self, workload: Workload, tag: str, seed: int, deadline: float) -> None:
        self.workload = workload
        self.tag = tag
        self.chooser = _Chooser(workload, tag, random.Random(seed))
        self.rng = self.chooser.rng
        self.deadline = deadline
        self.ops: list[Op] = []
        self.anomalies: list[str] = []

    def _pause_s(self) -> float | None:
        """None to stop; else a random pause before the next call, that spreads ``max_ops`` over
        ``duration_s`` (so that faults, compactions and evictions happen while the workers work)."""
        if len(self.ops) >= self.workload.max_ops or time.monotonic() >= self.deadline:
            return None
        return self.rng.uniform(0, 1.6 * self.workload.duration_s / self.workload.max_ops) if self.ops else 0.0

    def more(self) -> bool:
        """Whether to go on, after the pause."""
        pause_s = self._pause_s()
        if pause_s is None:
            return False
        time.sleep(pause_s)
        return time.monotonic() < self.deadline

    async def more_async(self) -> bool:
        """:meth:`more` for a task: the pause lets the other tasks run."""
        pause_s = self._pause_s()
        if pause_s is None:
            return False
        await asyncio.sleep(pause_s)
        return time.monotonic() < self.deadline

    def record(self, op: str, args: tuple[Any, ...], start: float, end: float, outcome: str, result: Any) -> None:
        if outcome == OK:
            problem = _shape_problem(op, args, result)
            if problem is not None:
                self.anomalies.append(f"shape: {self.tag}: {problem}")
                outcome, result = INFO, f"wrong shape: {result!r:.80}"
            else:
                self.chooser.saw(op, args, result)
        if outcome == INFO:
            end = math.inf
        self.ops.append(Op(self.tag, op, args, start, end, outcome, result))

    def run_lockstep(self, table: Any) -> None:
        ttl_s = self.workload.ttl_s
        while self.more():
            op, args = self.chooser.next()
            start = time.monotonic()
            try:
                result = _call(table, op, args, ttl_s)
            except Exception as exc:
                self.record(op, args, start, 0.0, *_failure(exc))
            else:
                self.record(op, args, start, time.monotonic(), OK, result)

    async def run_async(self, table: Any) -> None:
        """:meth:`run_lockstep` as a task, awaiting an asyncio client."""
        ttl_s = self.workload.ttl_s
        while await self.more_async():
            op, args = self.chooser.next()
            start = time.monotonic()
            try:
                result = await _call(table, op, args, ttl_s)
            except Exception as exc:
                self.record(op, args, start, 0.0, *_failure(exc))
            else:
                self.record(op, args, start, time.monotonic(), OK, result)

    def run_pipelines(self, table: Client) -> None:
        ttl_s = self.workload.ttl_s
        while self.more():
            commands = [self.chooser.next() for _ in range(self.rng.randrange(2, 9))]
            pipeline = table.pipeline(window=self.rng.choice((4, 16, 64)), per_message=self.rng.choice((1, 2, 4)))
            start = time.monotonic()
            try:
                for op, args in commands:
                    _call(pipeline, op, args, ttl_s)
                results = pipeline.execute(raise_on_error=False)
            except Exception as exc:
                for op, args in commands:
                    self.record(op, args, start, 0.0, *_failure(exc))
                continue
            end = time.monotonic()
            if len(results) != len(commands):
                self.anomalies.append(f"shape: {self.tag}: {len(results)} results for {len(commands)} commands")
            for (op, args), result in zip(commands, results, strict=False):
                if isinstance(result, BaseException):
                    self.record(op, args, start, end, *_failure(result))
                else:
                    self.record(op, args, start, end, OK, result)

    def run_batches(self) -> None:
        _BatchSender(self).run()


class _BatchSender:
    """A raw DEALER that sends ``batch`` messages, REQ envelope and all, up to two in flight.

    Replies on one connection come in request order, so the oldest batch
    owns the next reply: the socket never reconnects (see client/stream_transport.py
    for why), so it stays one connection. On a timeout, or a send finding the
    connection gone, it does what the library does: a new socket, every
    unanswered batch again with the same request ids; after ``retries``
    timeouts in a row the unanswered operations are ``info``. At the end it
    waits a little for replies nobody asked for.
    """

    WINDOW = 2

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        workload = worker.workload
        self.endpoint = f"tcp://{workload.nodes[0]}"
        self.timeout_ms = int(workload.timeout_s * 1000)
        self.retries = workload.retries
        self.curve = None
        if workload.server_key is not None:
            from client.curve import CurveKeys

            self.curve = CurveKeys.load(workload.server_key, workload.client_key)
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.socket: zmq.Socket[bytes] | None = None
        self.rids = 0
        #: Unanswered batches, oldest first: (frame, [(op, args)], start).
        self.in_flight: collections.deque[tuple[bytes, list[tuple[str, tuple[Any, ...]]], float]] = collections.deque()

    def _open(self) -> zmq.Socket[bytes]:
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RECONNECT_IVL, -1)
        if self.curve is not None:
            self.curve.apply(socket)
        socket.connect(self.endpoint)
        self.socket = socket
        return socket

    def _close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None

    def run(self) -> None:
        worker = self.worker
        self._open()
        try:
            while worker.more():
                commands = [worker.chooser.next() for _ in range(worker.rng.randrange(1, 7))]
                frames = []
                for op, args in commands:
                    self.rids += 1
                    options = _options(op, worker.workload.ttl_s, f"{worker.tag}:{self.rids}")
                    frames.append(encode_request(op, *_request_args(op, args), options=options))
                frame = encode_batch(frames)
                while len(self.in_flight) >= self.WINDOW:
                    self._receive_one()
                self.in_flight.append((frame, commands, time.monotonic()))
                assert self.socket is not None
                if not self._send(self.socket, frame):
                    self._resend_all()
            while self.in_flight:
                self._receive_one()
            assert self.socket is not None
            if self.socket.poll(300):
                extra = self.socket.recv_multipart()[-1]
                worker.anomalies.append(f"extra reply: {worker.tag}: {msgpack.unpackb(extra, raw=False)!r:.120}")
        finally:
            self._close()

    def _receive_one(self) -> None:
        worker = self.worker
        for _ in range(1 + self.retries):
            assert self.socket is not None
            if self.socket.poll(self.timeout_ms):
                reply = self.socket.recv_multipart()
                _, commands, start = self.in_flight.popleft()
                self._record(commands, start, reply)
                return
            self._resend_all()
        for _, commands, start in self.in_flight:
            for op, args in commands:
                worker.record(op, args, start, 0.0, INFO, "NodeUnavailableError: no reply to a batch")
        self.in_flight.clear()
        self._close()
        self._open()

    @staticmethod
    def _send(socket: zmq.Socket[bytes], frame: bytes) -> bool:
        try:
            socket.send_multipart([b"", frame], zmq.NOBLOCK)
        except zmq.Again:  # no connection (it never reconnects)
            return False
        return True

    def _resend_all(self) -> None:
        self._close()  # a late reply dies with the socket
        socket = self._open()
        for frame, _, _ in self.in_flight:
            if not self._send(socket, frame):
                return  # the wait times out and comes back here

    def _record(self, commands: list[tuple[str, tuple[Any, ...]]], start: float, reply: list[bytes]) -> None:
        worker = self.worker
        end = time.monotonic()
        try:
            if len(reply) != 2 or reply[0] != b"":
                raise ValueError(f"{len(reply)} frames")
            status, items = msgpack.unpackb(reply[1], raw=False)
            if status != 0 or not isinstance(items, list) or len(items) != len(commands):
                raise ValueError(f"status {status}, {len(items) if isinstance(items, list) else items!r:.80} items")
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            worker.anomalies.append(f"shape: {worker.tag}: a batch of {len(commands)} answered with {exc}")
            for op, args in commands:
                worker.record(op, args, start, 0.0, INFO, "wrong shape")
            return
        for (op, args), item in zip(commands, items, strict=True):
            try:
                result = reply_result(item[0], item[1])
            except MemlookupError as exc:
                worker.record(op, args, start, end, *_failure(exc))
                continue
            except (TypeError, IndexError, KeyError):
                worker.anomalies.append(f"shape: {worker.tag}: item {item!r:.80} for {op}")
                worker.record(op, args, start, 0.0, INFO, "wrong shape")
                continue
            if op == "mset":
                result = None if result is True else f"mset answered {result!r}"
            worker.record(op, args, start, end, OK, result)


def _run_process(workload: Workload, index: int, results: Any) -> None:
    """One worker process: a thread per ``workload.kinds`` entry; puts its History on ``results``."""
    deadline = time.monotonic() + workload.duration_s
    shared: Any = None
    if any(kind in ("client", "pipeline", "cluster") for kind in workload.kinds):
        shared = workload.client()
    workers: list[_Worker] = []
    threads = []
    own: list[Any] = []
    tasks: list[_Worker] = []
    for number, kind in enumerate(workload.kinds):
        worker = _Worker(workload, f"p{index}t{number}{kind[0]}", hash((workload.seed, index, number)), deadline)
        workers.append(worker)
        if kind in ("client", "cluster"):
            target: Callable[[], None] = functools.partial(worker.run_lockstep, shared)
        elif kind == "own":
            own.append(workload.client())
            target = functools.partial(worker.run_lockstep, own[-1])
        elif kind == "pipeline":
            target = functools.partial(worker.run_pipelines, shared)
        elif kind == "batch":
            target = worker.run_batches
        elif kind == "async":
            tasks.append(worker)
            continue
        else:
            raise ValueError(f"unknown worker kind {kind!r}")
        threads.append(threading.Thread(target=_guarded(worker, target)))
    if tasks:
        run_tasks = functools.partial(asyncio.run, _run_tasks(workload, tasks))
        threads.append(threading.Thread(target=_guarded(tasks[0], run_tasks)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for table in [shared, *own]:
        if table is not None:
            table.close()
    history = History()
    for worker in workers:
        history.ops.extend(worker.ops)
        history.anomalies.extend(worker.anomalies)
    results.put(history)


async def _run_tasks(workload: Workload, workers: list[_Worker]) -> None:
    """The ``async`` workers, as tasks of one event loop sharing one asyncio client."""
    table = workload.client(awaiting=True)

    async def guarded(worker: _Worker) -> None:
        try:
            await worker.run_async(table)
        except BaseException as exc:  # the history so far stands; the crash is an anomaly
            worker.anomalies.append(f"crash: {worker.tag}: {type(exc).__name__}: {exc}")

    try:
        await asyncio.gather(*(guarded(worker) for worker in workers))
    finally:
        table.close()


def _guarded(worker: _Worker, target: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            target()
        except BaseException as exc:  # the history so far stands; the crash is an anomaly
            worker.anomalies.append(f"crash: {worker.tag}: {type(exc).__name__}: {exc}")

    return run


def record(workload: Workload, during: Callable[[], None] | None = None) -> History:
    """Run ``workload`` in ``workload.processes`` spawned processes; their merged History.

    ``during`` runs in this process while the workers work (faults, say).
    A worker process that dies is an anomaly.
    """
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    processes = [spawn.Process(target=_run_process, args=(workload, index, results))
                 for index in range(workload.processes)]
    for process in processes:
        process.start()
    if during is not None:
        during()
    history = History()
    limit = time.monotonic() + workload.duration_s + 120
    for _ in processes:
        try:
            part = results.get(timeout=max(1.0, limit - time.monotonic()))
        except queue.Empty:
            history.anomalies.append("crash: a worker process sent no history")
            break
        history.ops.extend(part.ops)
        history.anomalies.extend(part.anomalies)
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        if process.exitcode != 0:
            history.anomalies.append(f"crash: a worker process ended with exit code {process.exitcode}")
    return history


def final_read(workload: Workload, attempts_s: float = 20.0) -> Op:
    """An ``mget`` of every key, recorded, once nothing else runs (retried until it is answered)."""
    keys = tuple(workload.register_keys + workload.counter_keys)
    deadline = time.monotonic() + attempts_s
    table = workload.client()
    try:
        while True:
            start = time.monotonic()
            try:
                values = table.mget(list(keys))
            except NodeUnavailableError:
                if time.monotonic() > deadline:
                    raise
                continue
            return Op("final", "mget", (keys,), start, time.monotonic(), OK, values)
    finally:
        table.close()


# -- checking ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyOp:
    """One operation on one key (``mset``/``mget`` split up): what the model needs."""

    kind: str  # write, read, del, cas, incr
    outcome: str  # ok or info (fail ones are left out: they did not happen)
    start: float
    end: float
    result: Any
    value: Any = None  # write: the value; cas: the new value; incr: the delta
    expected: Any = None  # cas
    source: Op | None = None


def split_by_key(ops: Iterable[Op]) -> dict[str, list[KeyOp]]:
    """Each key's operations; ``fail`` operations and unanswered reads are left out."""
    per_key: dict[str, list[KeyOp]] = collections.defaultdict(list)
    for op in ops:
        if op.outcome == FAIL or (op.outcome != OK and op.op in ("get", "mget")):
            continue  # it did not happen; or a read that got no answer, which tells nothing
        for key, key_op in _key_ops(op):
            per_key[key].append(key_op)
    return per_key


def _key_ops(op: Op) -> list[tuple[str, KeyOp]]:
    """``op`` as one operation per key it touches."""
    result = op.result if op.outcome == OK else None

    def one(kind: str, result: Any, **extra: Any) -> KeyOp:
        return KeyOp(kind, op.outcome, op.start, op.end, result, source=op, **extra)

    if op.op == "get":
        return [(op.args[0], one("read", result))]
    if op.op == "mget":
        values: list[str | None] = op.result  # an answered mget: checked to be one value per key
        return [(key, one("read", value)) for key, value in zip(op.args[0], values, strict=True)]
    if op.op == "set":
        return [(op.args[0], one("write", True, value=op.args[1]))]
    if op.op == "mset":
        return [(key, one("write", True, value=value)) for key, value in op.args[0]]
    if op.op == "del":
        return [(op.args[0], one("del", result))]
    if op.op == "cas":
        return [(op.args[0], one("cas", result, expected=op.args[1], value=op.args[2]))]
    return [(op.args[0], one("incr", result, value=op.args[1]))]


_IMPOSSIBLE = object()


def _apply(state: str | None, op: KeyOp) -> Any:
    """The key's next state after ``op`` from ``state``, or _IMPOSSIBLE if the op's result contradicts it."""
    known = op.outcome == OK
    kind = op.kind
    if kind == "read":
        return state if op.result == state else _IMPOSSIBLE
    if kind == "write":
        return op.value
    if kind == "del":
        if known and op.result != (state is not None):
            return _IMPOSSIBLE
        return None
    if kind == "cas":
        swapped = state == op.expected
        if known and op.result != swapped:
            return _IMPOSSIBLE
        return op.value if swapped else state
    # incr
    if state is None:
        number = 0
    else:
        digits = state[1:] if state[:1] == "-" else state
        if not digits.isdigit():
            return _IMPOSSIBLE if known else state  # it would have failed, changing nothing
        number = int(state)
    number += op.value
    if known and op.result != number:
        return _IMPOSSIBLE
    return str(number)


def _step(states: frozenset[str | None], op: KeyOp, evictions: bool) -> frozenset[str | None]:
    """Every state the key can be in after ``op``, from any of ``states`` (empty: none fits)."""
    if evictions and None not in states:
        states = states | {None}  # evicted just before this operation
    after = set()
    for state in states:
        new = _apply(state, op)
        if new is not _IMPOSSIBLE:
            after.add(new)
    return frozenset(after)


def linearizable(ops: list[KeyOp], evictions: bool = False, budget: int = SEARCH_BUDGET) -> str | None:
    """None if ``ops`` (one key's) can be ordered so that the model explains every result; else why not.

    The key starts missing. The search walks the calls and returns in time
    order; at each call it tries to take the operation next (if the model
    allows it and that set of taken operations in that state was not tried
    before); at a return whose operation was not taken yet it backtracks.
    """
    count = len(ops)
    if count == 0:
        return None
    events = sorted([(op.start, 0, index) for index, op in enumerate(ops)]
                    + [(op.end, 1, index) for index, op in enumerate(ops)])
    end = len(events) + 1
    following = list(range(1, end + 1))  # node 0 is the head; node i is events[i - 1]
    preceding = list(range(-1, end))
    is_return = [0] + [kind for _, kind, _ in events]
    index_of = [0] + [index for _, _, index in events]
    return_node = [0] * count
    for node in range(1, end):
        if is_return[node]:
            return_node[index_of[node]] = node

    def unlink(node: int) -> None:
        following[preceding[node]] = following[node]
        if following[node] != end:
            preceding[following[node]] = preceding[node]

    def relink(node: int) -> None:
        following[preceding[node]] = node
        if following[node] != end:
            preceding[following[node]] = node

    state: frozenset[str | None] = frozenset([None])
    taken = 0
    tried: set[tuple[int, frozenset[str | None]]] = set()
    stack: list[tuple[int, frozenset[str | None]]] = []
    deepest: tuple[int, int, frozenset[str | None]] = (-1, 0, state)
    node = following[0]
    steps = 0
    while following[0] != end:
        steps += 1
        if steps > budget:
            return f"undecided after {budget} search steps ({count} operations)"
        if not is_return[node]:
            index = index_of[node]
            after = _step(state, ops[index], evictions)
            if after:
                key = (taken | (1 << index), after)
                if key not in tried:
                    tried.add(key)
                    stack.append((node, state))
                    state, taken = after, key[0]
                    unlink(node)
                    unlink(return_node[index])
                    node = following[0]
                    continue
            node = following[node]
        else:
            if len(stack) > deepest[0]:
                deepest = (len(stack), index_of[node], state)
            if not stack:
                break
            node, state = stack.pop()
            taken &= ~(1 << index_of[node])
            relink(return_node[index_of[node]])
            relink(node)
            node = following[node]
    else:
        return None
    depth, blocked, states = deepest
    op = ops[blocked]
    source = op.source
    what = f"{source.worker} {source.op}{source.args!r:.100} -> {source.result!r:.60}" if source else op.kind
    return (f"not linearizable: at best {depth} of {count} operations fit, then {what} "
            f"(answered at {op.end:.4f}) fits no possible state {sorted(map(repr, states))[:4]}")


@dataclass
class Report:
    """What :func:`check` found."""

    ops: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    keys: int = 0
    key_ops: int = 0
    anomalies: list[str] = field(default_factory=list)
    check_s: float = 0.0

    def summary(self) -> str:
        outcomes = ", ".join(f"{n} {o}" for o, n in sorted(self.outcomes.items()))
        return (f"{self.ops} operations ({outcomes}), {self.key_ops} per-key operations on {self.keys} keys, "
                f"{len(self.anomalies)} anomalies, checked in {self.check_s:.2f} s")


def check(history: History, final: Op | None = None, evictions: bool = False,
          allowed_errors: tuple[str, ...] = (), strict: bool = True,
          counters: Iterable[str] = ()) -> Report:
    """Judge a history (see the module docstring). ``final`` is the read after
    everything else; ``allowed_errors`` are the error classes that may refuse a
    write in this mode (it then did not happen); ``counters`` are the ``incr``
    keys, whose totals are also accounted for one by one when nothing may
    evict them."""
    started = time.monotonic()
    ops = history.ops + ([final] if final is not None else [])
    report = Report(ops=len(ops), anomalies=list(history.anomalies))
    report.outcomes.update(op.outcome for op in ops)
    for op in ops:
        if op.outcome == OK:
            continue
        name = str(op.result).split(":", 1)[0]
        allowed = name in TIMEOUTS if op.outcome == INFO else name in allowed_errors
        if not allowed:
            report.anomalies.append(f"error: {op.worker} {op.op}{op.args!r:.80} raised {op.result!r:.160}")
    per_key = split_by_key(ops)
    report.keys = len(per_key)
    report.key_ops = sum(map(len, per_key.values()))
    for key, key_ops in sorted(per_key.items()):
        if strict:
            problem = linearizable(key_ops, evictions)
            if problem is not None:
                report.anomalies.append(f"{key}: {problem}")
        else:
            report.anomalies.extend(f"{key}: {p}" for p in _phantoms(key_ops))
    if final is not None and not evictions and strict:
        for key in counters:
            problem = _count_once(key, per_key.get(key, []), final)
            if problem is not None:
                report.anomalies.append(f"{key}: {problem}")
    report.check_s = time.monotonic() - started
    return report


def _phantoms(ops: list[KeyOp]) -> list[str]:
    """Reads of a value no write of this key had started to write before the read ended."""
    written: dict[Any, float] = {}
    for op in ops:
        if op.kind in ("write", "cas"):
            written[op.value] = min(written.get(op.value, math.inf), op.start)
    problems = []
    for op in ops:
        if op.kind == "read" and op.result is not None and not str(op.result).lstrip("-").isdigit():
            if written.get(op.result, math.inf) > op.end:
                problems.append(f"phantom: {op.source.worker if op.source else ''} read {op.result!r} "
                                f"that no write had started to write")
    return problems


def _count_once(key: str, ops: list[KeyOp], final: Op) -> str | None:
    """The final value of counter ``key`` must be the acknowledged increments plus some of the unanswered ones."""
    value = dict(zip(final.args[0], final.result, strict=True)).get(key)
    total = int(value) if value is not None else 0
    acknowledged = sum(op.value for op in ops if op.kind == "incr" and op.outcome == OK)
    unknown = [op.value for op in ops if op.kind == "incr" and op.outcome == INFO]
    sums = {0}
    for delta in unknown:
        sums |= {s + delta for s in sums}
        if len(sums) > 1_000_000:
            return None  # too many unanswered increments to account for one by one; linearizability still holds
    if total - acknowledged in sums:
        return None
    return (f"incr not counted exactly once: final value {total}, acknowledged increments add up to "
            f"{acknowledged}, and no subset of the {len(unknown)} unanswered ones makes up the difference "
            f"{total - acknowledged}")
