"""One client shared by threads, used after fork(), and ZeroMQ failures as memlookup errors."""

from __future__ import annotations

import multiprocessing
import queue
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq

from client import Client, ClusterClient, MemlookupError, NodeUnavailableError, TransportError
from common.protocol import Status, encode_reply

THREADS = 16
OPS_PER_THREAD = 1000


def _hammer(table: Any, thread_no: int, ops: int, seed: int) -> tuple[int, list[str], list[str]]:
    """Mixed operations on this thread's own keys, each result checked against what it wrote.

    Returns (operations done, errors raised, wrong results).
    """
    rng = random.Random(seed)
    keys = [f"t{thread_no}:k{i}" for i in range(6)]
    counter = f"t{thread_no}:n"
    model: dict[str, str | None] = {key: None for key in keys}
    count = 0
    errors: list[str] = []
    wrong: list[str] = []

    def expect(what: str, got: object, want: object) -> None:
        if got != want:
            wrong.append(f"thread {thread_no} {what}: {got!r} instead of {want!r}")

    for n in range(ops):
        key = rng.choice(keys)
        value = f"{thread_no}:{n}"
        roll = rng.random()
        try:
            if roll < 0.25:
                expect(f"set {key}", table.set(key, value), True)
                model[key] = value
            elif roll < 0.5:
                expect(f"get {key}", table.get(key), model[key])
            elif roll < 0.6:
                expect(f"del {key}", table.delete(key), model[key] is not None)
                model[key] = None
            elif roll < 0.7:
                count += 1
                expect(f"incr {counter}", table.incr(counter), count)
            elif roll < 0.8:
                expected = model[key] if rng.random() < 0.7 else "not it"
                swapped = model[key] is not None and expected == model[key]
                expect(f"cas {key}", table.cas(key, expected or "missing", value), swapped)
                if swapped:
                    model[key] = value
            elif roll < 0.9:
                pair = rng.sample(keys, 2)
                expect(f"mset {pair}", table.mset({k: value for k in pair}), None)
                model.update({k: value for k in pair})
            else:
                expect("mget", table.mget(keys), [model[k] for k in keys])
        except Exception as exc:  # a zmq error must be counted too, not end the thread
            errors.append(f"thread {thread_no} op {n}: {type(exc).__module__}.{type(exc).__name__}: {exc}")
    return ops, errors, wrong


def _shared_by_threads(kind: str, nodes: list[str], results: Any) -> None:
    """In a child process (so that an abort shows as its exit code): THREADS threads, one shared client."""
    if kind == "client":
        table: Any = Client(nodes[0], timeout_s=10, retries=0)
    else:
        table = ClusterClient(nodes, replicas=2, timeout_s=10, retries=0)
    done = 0
    errors: list[str] = []
    wrong: list[str] = []
    lock = threading.Lock()

    def run(thread_no: int) -> None:
        nonlocal done
        count, thread_errors, thread_wrong = _hammer(table, thread_no, OPS_PER_THREAD, seed=thread_no)
        with lock:
            done += count
            errors.extend(thread_errors)
            wrong.extend(thread_wrong)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    table.close()
    results.put([done, errors, wrong])


def _result_of(child: Any, results: Any, default: Any, timeout_s: float = 100.0) -> Any:
    """What ``child`` put on ``results``, or ``default`` if it died (or hung) without; it is ended either way."""
    deadline = time.monotonic() + timeout_s
    outcome = default
    while time.monotonic() < deadline:
        try:
            outcome = results.get(timeout=0.5)
            break
        except queue.Empty:
            if not child.is_alive():
                break
    child.join(10)
    if child.is_alive():
        child.kill()
        child.join()
    return outcome


@pytest.mark.parametrize("kind, node_count", [("client", 1), ("cluster", 3)])
def test_one_client_shared_by_16_threads_gives_no_errors_and_no_wrong_values(start_server, kind, node_count):
    nodes = [start_server().node for _ in range(node_count)]
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    child = spawn.Process(target=_shared_by_threads, args=(kind, nodes, results))
    child.start()
    done, errors, wrong = _result_of(child, results, default=(0, [], []))
    print(f"\n{kind}: {THREADS} threads x {OPS_PER_THREAD} operations on one shared client: {done} done, "
          f"{len(errors)} errors, {len(wrong)} wrong values, exit code {child.exitcode}")
    assert child.exitcode == 0, f"the process died with exit code {child.exitcode}"
    assert errors == [], f"{len(errors)} errors, first: {errors[:3]}"
    assert wrong == [], f"{len(wrong)} wrong results, first: {wrong[:3]}"
    assert done == THREADS * OPS_PER_THREAD


def _pipelines_by_threads(node: str, results: Any) -> None:
    """In a child process: THREADS threads, each filling its own pipelines from one shared Client."""
    table = Client(node, timeout_s=10, retries=0)
    problems: list[str] = []

    def run(thread_no: int) -> None:
        try:
            for round_no in range(50):
                pipeline = table.pipeline(window=16, per_message=(1, 4)[round_no % 2])
                expected = []
                for i in range(10):
                    key, value = f"t{thread_no}:k{i}", f"{thread_no}:{round_no}:{i}"
                    pipeline.set(key, value).get(key)
                    expected += [True, value]
                got = pipeline.execute()
                if got != expected:
                    problems.append(f"thread {thread_no} round {round_no}: {got[:4]}... instead of {expected[:4]}...")
        except Exception as exc:
            problems.append(f"thread {thread_no}: {type(exc).__module__}.{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    table.close()
    results.put(problems)


def test_threads_making_pipelines_from_one_client_each_get_their_own_results(server):
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    child = spawn.Process(target=_pipelines_by_threads, args=(server.node, results))
    child.start()
    problems = _result_of(child, results, default=["no result"])
    assert child.exitcode == 0, f"the process died with exit code {child.exitcode}"
    assert problems == [], f"{len(problems)} problems, first: {problems[:3]}"


def test_one_threads_timeout_does_not_hold_up_another_threads_call():
    """A peer that answers ``get fast`` at once and never ``get slow``: while one
    thread waits for "slow", another's "fast" must come back."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(20):
                identity, _, body = router.recv_multipart()
                if msgpack.unpackb(body)[1] == "fast":
                    router.send_multipart([identity, b"", encode_reply(Status.OK, "quick")])

    server = threading.Thread(target=serve)
    server.start()
    table = Client(f"127.0.0.1:{port}", timeout_s=5, retries=0)
    slow_outcome: list[BaseException] = []

    def slow() -> None:
        try:
            table.get("slow")
        except BaseException as exc:
            slow_outcome.append(exc)

    waiting = threading.Thread(target=slow)
    try:
        waiting.start()
        time.sleep(0.3)  # "slow" is sent and waiting
        assert table.get("fast") == "quick"
        assert waiting.is_alive(), "the fast call came back only after the slow one gave up"
        waiting.join(10)
        assert len(slow_outcome) == 1 and isinstance(slow_outcome[0], NodeUnavailableError)
    finally:
        stop.set()
        server.join()
        table.close()
        router.close(linger=0)
        context.term()


def _in_forked_child(work: Callable[[], None]) -> int:
    """Run ``work`` in a child made by os.fork(); its exit code (1: it raised; -9: hung, killed)."""
    fork = multiprocessing.get_context("fork")
    child = fork.Process(target=work)
    child.start()
    child.join(20)
    if child.is_alive():
        child.kill()
        child.join()
    assert child.exitcode is not None  # joined, so it has one
    return child.exitcode


def test_a_client_used_in_a_forked_child_reconnects_and_both_keep_working(server):
    with Client(server.node, timeout_s=3, retries=0) as table:
        table.set("before", "fork")  # the parent's socket is open, and its request ids started

        def child() -> None:
            assert table.get("before") == "fork"
            assert table.set("child", "wrote")
            assert table.incr("hits") == 1
            with table.pipeline() as p:
                p.set("child-pipe", "yes").get("child")
            assert p.results == [True, "wrote"]

        assert _in_forked_child(child) == 0
        # The parent's next write id is the one the child used first, unless the child got its own:
        assert table.set("parent", "wrote")
        assert table.incr("hits") == 2
        assert table.mget(["child", "child-pipe", "parent", "before"]) == ["wrote", "yes", "wrote", "fork"]


def test_a_cluster_client_used_in_a_forked_child_works_and_so_does_the_parents(start_server):
    nodes = [start_server().node for _ in range(3)]
    with ClusterClient(nodes, replicas=2, timeout_s=3, retries=0) as table:
        table.mset({f"k{i}": str(i) for i in range(20)})  # the parent's worker threads have run

        def child() -> None:
            assert table.mget([f"k{i}" for i in range(20)]) == [str(i) for i in range(20)]
            table.mset({"from-child": "yes", "k0": "child"})

        assert _in_forked_child(child) == 0
        table.set("from-parent", "yes")
        assert table.mget(["from-child", "k0", "from-parent"]) == ["yes", "child", "yes"]


def test_a_terminated_context_is_a_transport_error_not_a_zmq_error(server):
    context = zmq.Context()
    table = Client(server.node, timeout_s=2, retries=0, context=context)
    assert table.set("k", "v")
    with table.pipeline() as p:
        p.get("k")
    table.close()
    context.term()
    with pytest.raises(TransportError, match="context was terminated"):
        table.get("k")
    with pytest.raises(TransportError, match="context was terminated"):
        table.pipeline().get("k").execute()
    with pytest.raises(TransportError):
        table.set("k", "again")


def test_a_context_terminated_during_a_call_ends_it_with_a_transport_error(start_server):
    server = start_server()
    context = zmq.Context()
    table = Client(server.node, timeout_s=30, retries=0, context=context)
    table.ping()
    server.signal(signal.SIGSTOP)  # the next call waits for a reply that does not come
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            table.get("k")
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    started = time.monotonic()
    try:
        caller.start()
        time.sleep(0.3)
        terminator = threading.Thread(target=context.term)  # returns once every socket is closed
        terminator.start()
        caller.join(10)
        terminator.join(10)
    finally:
        server.signal(signal.SIGCONT)
    assert not terminator.is_alive(), "term() never returned: the client kept its socket open"
    assert len(outcome) == 1 and isinstance(outcome[0], TransportError), outcome
    assert outcome[0].errno == zmq.ETERM
    assert time.monotonic() - started < 10


def test_a_cluster_client_does_not_mark_nodes_dead_for_its_own_terminated_context(start_server):
    nodes = [start_server().node for _ in range(3)]
    context = zmq.Context()
    table = ClusterClient(nodes, replicas=2, timeout_s=2, retries=0, context=context)
    table.set("k", "v")
    table.close()
    context.term()
    with pytest.raises(TransportError):
        table.get("k")
    with pytest.raises(MemlookupError):
        table.mget(["k", "j"])
    assert not any(table.is_dead(name) for name in nodes)
