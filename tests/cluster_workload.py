"""Writers and readers that never stop while a cluster changes, and a checker of what they saw.

Recording (:class:`Recorder`): threads sharing one :class:`ClusterClient`
call the cluster until told to stop. Writers ``set`` keys to values nobody
else writes, or ``del`` them; readers ``get`` one key or ``mget`` a sample.
The key space is *static* keys, written once (``mset``) before the workers
start and then only read -- most of the data a membership change must carry
-- and *churn* keys, written and deleted all along. Every call becomes one
:class:`Op` per key: when it started and ended (``time.monotonic``, which
containers share with their host) and what came back: ``ok``, ``info`` (no
answer, :class:`NodeUnavailableError`: a write may or may not have happened,
a read failed) or ``fail`` (refused: it did not happen). The test marks when
each change began and ended (:meth:`Recorder.begin`, :meth:`Recorder.end`);
at the stop, every key is read once more (the *final* read).

Run as a program (``python -m tests.cluster_workload --nodes n1,n2,n3``, in a
container on the cluster's network, since only that network resolves the
nodes' names) it is driven through its standard input, one command a line
(``begin LABEL``, ``reach NODE``, ``end LABEL``, ``stop``), and answers
each with one JSON line; :class:`RecorderProcess` is that driver. It needs
only what the memlookup image holds: no pytest here.

Checking (:func:`check`), per key, with ``ok`` and ``info`` writes (an
``info`` write may take effect at any time after it started, or never):

* **unreadable**: a read that returned nothing, or failed, while the key had
  to exist: an acknowledged ``set`` ended before the read started, and every
  ``del`` that started before the read ended had ended before that ``set``
  started (so none can explain the miss). Counted at any moment, changes
  included. (Stricter than "no concurrent write": a concurrent ``set`` never
  excuses a miss.)
* **resurrected**: a read that returned a value after an acknowledged ``del``
  that ended before the read started, when no ``set`` can be ordered between
  them (every ``set`` that started before the read ended had ended before the
  ``del`` started). At any moment.
* **stale**: a read returned a value whose ``set`` had ended before some
  other acknowledged write of the key started, and that write ended before
  the read started: an older value. An anomaly when the read started outside
  every change (a figure during one).
* **lost**: the final read of a key misses while it had to exist, or returns
  an older value.
* **phantom**: a value no ``set`` of that key had started to write; and
  **errors**: any error other than a node not answering, or a worker that
  crashed.

Figures: operations by kind and outcome, reads that failed or missed, reads
that took more than one round of requests (they fell back to another owner:
rounds as :meth:`ClusterClient.on_each` counts them), each change's duration.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import math
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from client import Client, ClusterClient
from common.errors import NodeUnavailableError
from tests.history import FAIL, INFO, OK, outcome_of

T = TypeVar("T")

SET, DEL, GET, FINAL = "set", "del", "get", "final"

#: Anomaly kinds, in the order reports list them.
KINDS = ("unreadable", "lost", "resurrected", "stale", "phantom", "errors")


@dataclass(frozen=True)
class Op:
    """One operation on one key (an ``mget`` or ``mset`` is one per key).

    ``value``: for a set, the value written; for a read, what came back (None:
    missing, or no answer). ``end`` is ``math.inf`` when no answer came.
    ``rounds``: for a read, the rounds of requests its call took.
    """

    worker: str
    kind: str
    key: str
    value: str | None
    start: float
    end: float
    outcome: str
    rounds: int = 0
    error: str = ""


@dataclass(frozen=True)
class Change:
    """A membership change, as the test marked it (``end`` is ``math.inf`` if it never ended)."""

    label: str
    start: float
    end: float = math.inf


@dataclass
class History:
    """Everything recorded: the operations, the changes, and crashes."""

    ops: list[Op] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"ops": [[op.worker, op.kind, op.key, op.value, op.start, op.end, op.outcome, op.rounds, op.error]
                        for op in self.ops],
                "changes": [[c.label, c.start, c.end] for c in self.changes], "crashes": self.crashes}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> History:
        return cls([Op(*row) for row in data["ops"]], [Change(*row) for row in data["changes"]],
                   list(data["crashes"]))


@dataclass(frozen=True)
class Spec:
    """What the recorder does. Client settings are :class:`ClusterClient`'s defaults unless given."""

    nodes: tuple[str, ...]
    replicas: int = 2
    static_keys: int = 1000
    churn_keys: int = 200
    writers: int = 2
    readers: int = 2
    #: Keys each ``mget`` of a batch reader asks for (one such reader besides ``readers``).
    batch: int = 20
    #: The pause of each worker between two calls: the load stays modest on a shared machine.
    pause_s: float = 0.01
    #: Share of a writer's calls that are ``del`` (the rest are ``set``).
    deletes: float = 0.3
    timeout_s: float = 0.5
    retries: int = 1
    prefix: str = "mc"
    seed: int = 0

    @property
    def static(self) -> list[str]:
        return [f"{self.prefix}:s{i}" for i in range(self.static_keys)]

    @property
    def churn(self) -> list[str]:
        return [f"{self.prefix}:c{i}" for i in range(self.churn_keys)]

    @staticmethod
    def static_value(key: str) -> str:
        return "static-" + key


class CountingClusterClient(ClusterClient):
    """A ClusterClient that counts, per thread, the rounds of requests (:meth:`on_each` calls) of each call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rounds = threading.local()

    def on_each(self, work: Mapping[str, Callable[[Client], T]]) -> dict[str, T | NodeUnavailableError]:
        self._rounds.count = getattr(self._rounds, "count", 0) + 1
        return super().on_each(work)

    def rounds(self) -> int:
        """Rounds since the last call of this method, in this thread."""
        count: int = getattr(self._rounds, "count", 0)
        self._rounds.count = 0
        return count


class Recorder:
    """Workers calling the cluster until :meth:`stop`; their :class:`History`."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.table = CountingClusterClient(list(spec.nodes), replicas=spec.replicas, timeout_s=spec.timeout_s,
                                           retries=spec.retries)
        self.history = History()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._values = 0

    # -- one recorded call ---------------------------------------------------------------

    def _record(self, ops: Iterable[Op]) -> None:
        with self._lock:
            self.history.ops.extend(ops)

    def _value(self, worker: str) -> str:
        with self._lock:
            self._values += 1
            return f"{worker}.{self._values}"

    def write(self, worker: str, key: str, value: str) -> None:
        """``set key value`` through the cluster, recorded."""
        start = time.monotonic()
        try:
            self.table.set(key, value)
        except Exception as exc:
            outcome, error = outcome_of(exc)
            self._record([Op(worker, SET, key, value, start, math.inf if outcome == INFO else time.monotonic(),
                             outcome, error=error)])
        else:
            self._record([Op(worker, SET, key, value, start, time.monotonic(), OK)])

    def delete(self, worker: str, key: str) -> None:
        """``del key`` through the cluster, recorded."""
        start = time.monotonic()
        try:
            self.table.delete(key)
        except Exception as exc:
            outcome, error = outcome_of(exc)
            self._record([Op(worker, DEL, key, None, start, math.inf if outcome == INFO else time.monotonic(),
                             outcome, error=error)])
        else:
            self._record([Op(worker, DEL, key, None, start, time.monotonic(), OK)])

    def read(self, worker: str, keys: list[str], kind: str = GET) -> None:
        """``get`` (one key) or ``mget`` through the cluster, recorded per key."""
        self.table.rounds()
        start = time.monotonic()
        try:
            values = [self.table.get(keys[0])] if len(keys) == 1 else self.table.mget(keys)
        except Exception as exc:
            end, rounds = time.monotonic(), self.table.rounds()
            outcome, error = outcome_of(exc)
            self._record(Op(worker, kind, key, None, start, end, outcome, rounds, error) for key in keys)
        else:
            end, rounds = time.monotonic(), self.table.rounds()
            self._record(Op(worker, kind, key, value, start, end, OK, rounds)
                         for key, value in zip(keys, values, strict=True))

    def preload(self) -> None:
        """Write the static keys (one ``mset`` a few hundred keys at a time), recorded as sets."""
        keys = self.spec.static
        for first in range(0, len(keys), 250):
            chunk = keys[first:first + 250]
            start = time.monotonic()
            self.table.mset({key: self.spec.static_value(key) for key in chunk})
            end = time.monotonic()
            self._record(Op("preload", SET, key, self.spec.static_value(key), start, end, OK) for key in chunk)

    # -- the workers ---------------------------------------------------------------------------

    def _writer(self, name: str, rng: random.Random) -> None:
        churn = self.spec.churn
        while not self._stopping.wait(self.spec.pause_s):
            key = rng.choice(churn)
            if rng.random() < self.spec.deletes:
                self.delete(name, key)
            else:
                self.write(name, key, self._value(name))

    def _reader(self, name: str, rng: random.Random) -> None:
        churn = self.spec.churn
        while not self._stopping.wait(self.spec.pause_s):
            self.read(name, [rng.choice(churn)])

    def _batch_reader(self, name: str, rng: random.Random) -> None:
        everything = self.spec.static + self.spec.churn
        while not self._stopping.wait(self.spec.pause_s):
            self.read(name, rng.sample(everything, min(self.spec.batch, len(everything))))

    def _guarded(self, name: str, work: Callable[[str, random.Random], None]) -> threading.Thread:
        rng = random.Random(f"{self.spec.seed}/{name}")

        def run() -> None:
            try:
                work(name, rng)
            except BaseException as exc:  # what was recorded stands; the crash is an anomaly
                with self._lock:
                    self.history.crashes.append(f"{name}: {type(exc).__name__}: {exc}")

        return threading.Thread(target=run, name=name, daemon=True)

    def start(self) -> None:
        """Preload the static keys, then start the workers."""
        self.preload()
        workers = ([(f"w{i}", self._writer) for i in range(self.spec.writers)]
                   + [(f"r{i}", self._reader) for i in range(self.spec.readers)] + [("b0", self._batch_reader)])
        self._threads = [self._guarded(name, work) for name, work in workers]
        for thread in self._threads:
            thread.start()

    # -- marks, measurements, the end -----------------------------------------------------

    def begin(self, label: str) -> float:
        """A change starts now (call it before acting)."""
        now = time.monotonic()
        with self._lock:
            self.history.changes.append(Change(label, now))
        return now

    def end(self, label: str) -> float:
        """The change ``label`` has completed (call it once it has)."""
        now = time.monotonic()
        with self._lock:
            changes = self.history.changes
            index = max(i for i, change in enumerate(changes) if change.label == label)
            changes[index] = Change(label, changes[index].start, now)
        return now

    def reach(self, node: str, timeout_s: float = 120.0) -> float:
        """Wait until this process reaches ``node`` by its name (a new connection answers a ping), and
        return how long that took. Name lookups are shared by the process's clients (common.address),
        so the workers' client then finds the node too."""
        started = time.monotonic()
        with Client(node, timeout_s=0.5, retries=0) as fresh:
            while True:
                try:
                    fresh.ping()
                    return time.monotonic() - started
                except NodeUnavailableError:
                    if time.monotonic() - started > timeout_s:
                        raise
                    fresh.close()
                    time.sleep(0.2)

    def stop(self, final_attempts_s: float = 30.0) -> History:
        """Stop the workers, read every key once more (until the cluster answers), and return the history."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(60)
            if thread.is_alive():
                self.history.crashes.append(f"{thread.name}: still running a minute after the stop")
        keys = self.spec.static + self.spec.churn
        deadline = time.monotonic() + final_attempts_s
        while True:
            before = len(self.history.ops)
            self.read("final", keys, FINAL)
            last = self.history.ops[before:]
            if all(op.outcome == OK for op in last) or time.monotonic() > deadline:
                break
            del self.history.ops[before:]
            time.sleep(0.5)
        self.table.close()
        return self.history


# -- the recorder as a program, and its driver --------------------------------------------------------


def _serve(recorder: Recorder, commands: IO[str], answers: IO[str]) -> None:
    """Answer each command line with one JSON line, until ``stop`` (or the end of the input)."""

    def answer(data: Mapping[str, Any]) -> None:
        answers.write(json.dumps(data) + "\n")
        answers.flush()

    recorder.start()
    answer({"ready": time.monotonic()})
    for line in commands:
        word, _, rest = line.strip().partition(" ")
        if word == "begin":
            answer({"begun": rest, "at": recorder.begin(rest)})
        elif word == "reach":
            answer({"reached": rest, "after_s": recorder.reach(rest)})
        elif word == "end":
            answer({"ended": rest, "at": recorder.end(rest)})
        elif word == "stop":
            break
        else:
            answer({"error": f"unknown command {line.strip()!r}"})
    answer({"history": recorder.stop().to_json()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Record a workload through a memlookup cluster (see the module "
                                                 "docstring); commands on stdin, JSON lines on stdout.")
    parser.add_argument("--nodes", required=True)
    for name, default in ((f.name, f.default) for f in Spec.__dataclass_fields__.values() if f.name != "nodes"):
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    args = vars(parser.parse_args(argv))
    spec = Spec(nodes=tuple(args.pop("nodes").split(",")), **args)
    _serve(Recorder(spec), sys.stdin, sys.stdout)
    return 0


class RecorderProcess:
    """A recorder run as a program: ``command`` runs ``python -m tests.cluster_workload ...``
    (here, or in a container); the methods send its commands and wait for the answers."""

    def __init__(self, command: list[str], start_timeout_s: float = 120.0) -> None:
        self._stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._answer(start_timeout_s)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    def _answer(self, timeout_s: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise RuntimeError(f"the recorder did not answer within {timeout_s} s:\n{self.stderr()}") from None
        if not line:
            raise RuntimeError(f"the recorder ended (exit {self.proc.wait()}):\n{self.stderr()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def _ask(self, command: str, timeout_s: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer(timeout_s)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-5000:]

    def begin(self, label: str) -> None:
        self._ask(f"begin {label}")

    def end(self, label: str) -> None:
        self._ask(f"end {label}")

    def reach(self, node: str) -> float:
        """Seconds until the recorder reached ``node`` by its name (:meth:`Recorder.reach`)."""
        after_s: float = self._ask(f"reach {node}", timeout_s=180.0)["after_s"]
        return after_s

    def stop(self) -> History:
        history = History.from_json(self._ask("stop", timeout_s=180.0)["history"])
        self.proc.wait(30)
        return history

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


# -- checking -----------------------------------------------------------------------------------------


class _Latest:
    """Of some (x, y) points: the largest y among those with x below a bound."""

    def __init__(self, points: Iterable[tuple[float, float]]) -> None:
        ordered = sorted(points)
        self._xs = [x for x, _ in ordered]
        self._best: list[float] = []
        best = -math.inf
        for _, y in ordered:
            best = max(best, y)
            self._best.append(best)

    def below(self, bound: float) -> float:
        """max y over the points with x < bound (``-inf`` when there are none)."""
        count = bisect.bisect_left(self._xs, bound)
        return self._best[count - 1] if count else -math.inf


class _KeyWrites:
    """One key's writes, indexed for the questions :func:`check` asks of each read."""

    def __init__(self, writes: list[Op]) -> None:
        done = [w for w in writes if w.outcome == OK]
        sets = [w for w in writes if w.kind == SET]
        dels = [w for w in writes if w.kind == DEL]
        #: The latest start of an acknowledged set that ended before a bound.
        self.acked_set = _Latest((w.end, w.start) for w in done if w.kind == SET)
        #: The latest end of a del (acknowledged or not) that started before a bound.
        self.any_del = _Latest((w.start, w.end) for w in dels)
        #: The latest start of an acknowledged del that ended before a bound.
        self.acked_del = _Latest((w.end, w.start) for w in done if w.kind == DEL)
        #: The latest end of a set (acknowledged or not) that started before a bound.
        self.any_set = _Latest((w.start, w.end) for w in sets)
        #: The latest start of an acknowledged write that ended before a bound.
        self.acked_write = _Latest((w.end, w.start) for w in done)
        self.by_value = {w.value: w for w in sets}


def _judge(read: Op, writes: _KeyWrites) -> str | None:
    """The anomaly ``read`` shows (one of :data:`KINDS`, "stale" before windows are considered), or None."""
    if read.outcome != OK or read.value is None:
        last_set_start = writes.acked_set.below(read.start)
        must_exist = last_set_start > -math.inf and writes.any_del.below(read.end) < last_set_start
        return "unreadable" if must_exist else None
    source = writes.by_value.get(read.value)
    if source is None or source.start > read.end:
        return "phantom"
    if writes.acked_del.below(read.start) > writes.any_set.below(read.end):
        return "resurrected"
    if writes.acked_write.below(read.start) > source.end:
        return "stale"
    return None


def _describe(op: Op) -> str:
    got = op.error or repr(op.value)
    return f"{op.kind} {op.key} by {op.worker} at {op.start:.3f}-{op.end:.3f}: {got:.160}"


@dataclass
class Report:
    """What :func:`check` found: the anomalies of each kind (:data:`KINDS`), and figures."""

    anomalies: dict[str, list[Op | str]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    figures: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """How many anomalies of each kind: all zero when the cluster hid, lost and resurrected nothing."""
        return {kind: len(found) for kind, found in self.anomalies.items()}

    def summary(self, examples: int = 3) -> str:
        lines = [f"{name}: {value}" for name, value in self.figures.items()]
        for kind, found in self.anomalies.items():
            lines.append(f"{kind}: {len(found)}")
            lines.extend(f"    {item if isinstance(item, str) else _describe(item)}" for item in found[:examples])
        return "\n".join(lines)


def check(history: History) -> Report:
    """Judge a history (see the module docstring)."""
    report = Report()
    per_key: dict[str, list[Op]] = collections.defaultdict(list)
    for op in history.ops:
        if op.kind in (SET, DEL) and op.outcome != FAIL:
            per_key[op.key].append(op)
        if op.error.startswith("unexpected ") or (op.outcome == FAIL and op.kind in (GET, FINAL)):
            report.anomalies["errors"].append(op)
    report.anomalies["errors"].extend(f"crash: {crash}" for crash in history.crashes)
    windows = [(change.start, change.end) for change in history.changes]
    indexed = {key: _KeyWrites(writes) for key, writes in per_key.items()}
    empty = _KeyWrites([])
    stale_during_changes = 0
    for op in history.ops:
        if op.kind not in (GET, FINAL):
            continue
        found = _judge(op, indexed.get(op.key, empty))
        if found is None:
            continue
        if op.kind == FINAL and found in ("unreadable", "stale"):
            found = "lost"
        elif found == "stale" and any(start <= op.start <= end for start, end in windows):
            stale_during_changes += 1
            continue
        report.anomalies[found].append(op)
    report.figures = _figures(history, stale_during_changes)
    report.figures["unreadable keys"] = len({op.key for op in report.anomalies["unreadable"]
                                             if isinstance(op, Op)})
    return report


def _figures(history: History, stale_during_changes: int) -> dict[str, Any]:
    reads = [op for op in history.ops if op.kind == GET]
    outcomes = collections.Counter(f"{op.kind} {op.outcome}" for op in history.ops if op.kind in (SET, DEL))
    figures: dict[str, Any] = {
        "writes": dict(sorted(outcomes.items())),
        "key reads": len(reads),
        "key reads that failed": sum(op.outcome != OK for op in reads),
        "key reads that missed": sum(op.outcome == OK and op.value is None for op in reads),
        "key reads that fell back (more than one round)": sum(op.rounds > 1 for op in reads),
        "older values read during changes": stale_during_changes,
    }
    for change in history.changes:
        figures[f"change '{change.label}' took"] = f"{change.end - change.start:.1f} s"
        figures[f"writes acknowledged during '{change.label}'"] = sum(
            op.kind in (SET, DEL) and op.outcome == OK and change.start <= op.start and op.end <= change.end
            for op in history.ops)
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
