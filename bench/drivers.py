"""How the load generator talks to each kind of server, one driver per kind.

A driver runs one request of an operation in lockstep (:meth:`call`) or
keeps ``depth`` requests in flight (:meth:`run_pipelined`), and times each
request. The memlookup driver uses this project's client; the Redis driver
uses redis-py, so a comparison runs the same workload through each server's
own Python client.
"""

from __future__ import annotations

import collections
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

#: Operations the load generator knows; ``mget``/``mset`` take ``batch`` keys.
OPS = ("get", "set", "mget", "mset", "incr", "del", "exists", "ping")

#: One request: (op, keys, value).
Request = tuple[str, list[str], str]


def apply(target: Any, op: str, keys: list[str], value: str) -> Any:
    """Issue one request on ``target``: a memlookup Client or Pipeline, or a
    redis-py client or pipeline (their method names agree)."""
    if op == "get":
        return target.get(keys[0])
    if op == "set":
        return target.set(keys[0], value)
    if op == "mget":
        return target.mget(keys)
    if op == "mset":
        return target.mset(dict.fromkeys(keys, value))
    if op == "incr":
        return target.incr("counter:" + keys[0])
    if op == "del":
        return target.delete(keys[0])
    if op == "exists":
        return target.exists(keys[0])
    return target.ping()


class _Driver(ABC):
    client: Any

    def call(self, op: str, keys: list[str], value: str) -> Any:
        """Send one request and wait for its reply."""
        return apply(self.client, op, keys, value)

    @abstractmethod
    def run_pipelined(self, requests: Iterator[Request], depth: int, latencies: list[float],
                      on_done: Callable[[], None], per_message: int = 1) -> int:
        """Keep ``depth`` requests in flight, appending each one's latency to
        ``latencies`` and calling ``on_done`` after each; returns how many were refused."""

    def prefill(self, keys: list[str], value: str, batch: int = 1000) -> None:
        """Store every key, ``batch`` at a time (untimed)."""
        for start in range(0, len(keys), batch):
            self.client.mset(dict.fromkeys(keys[start:start + batch], value))

    def close(self) -> None:
        self.client.close()


class MemlookupDriver(_Driver):
    def __init__(self, node: str, timeout_s: float = 5.0) -> None:
        from client import Client

        self.client = Client(node, timeout_s=timeout_s, retries=0)

    def run_pipelined(self, requests: Iterator[Request], depth: int, latencies: list[float],
                      on_done: Callable[[], None], per_message: int = 1) -> int:
        """Keep ``depth`` requests in flight, ``per_message`` to a message; returns how many were refused.

        Through the client's :class:`client.pipeline.Stream`, as a program
        streaming commands would (writes carry request ids as usual). Results
        come back in order, so one queue of send times matches them.
        """
        from common.errors import MemlookupError

        perf = time.perf_counter
        sent_at: collections.deque[float] = collections.deque()
        errors = 0

        def on_result(result: Any) -> None:
            nonlocal errors
            latencies.append(perf() - sent_at.popleft())
            if isinstance(result, MemlookupError):
                errors += 1
            on_done()

        with self.client.stream(on_result, window=depth, per_message=per_message) as stream:
            for op, keys, value in requests:
                sent_at.append(perf())
                apply(stream, op, keys, value)
        return errors


class RedisDriver(_Driver):
    def __init__(self, node: str, timeout_s: float = 5.0) -> None:
        import redis

        host, _, port = node.rpartition(":")
        self.client = redis.Redis(host=host or "127.0.0.1", port=int(port or 6379),
                                  socket_timeout=timeout_s, decode_responses=True)

    def run_pipelined(self, requests: Iterator[Request], depth: int, latencies: list[float],
                      on_done: Callable[[], None], per_message: int = 1) -> int:
        """redis-py pipelines are sent whole: each request's latency is its batch's
        (``per_message`` does not apply: Redis has no batch message)."""
        import redis

        errors = 0
        perf = time.perf_counter
        batch: list[Request] = []

        def flush() -> None:
            nonlocal errors
            pipe = self.client.pipeline(transaction=False)
            for op, keys, value in batch:
                apply(pipe, op, keys, value)
            started = perf()
            results = pipe.execute(raise_on_error=False)
            elapsed = perf() - started
            for result in results:
                latencies.append(elapsed)
                errors += isinstance(result, redis.RedisError)
                on_done()
            batch.clear()

        for request in requests:
            batch.append(request)
            if len(batch) >= depth:
                flush()
        if batch:
            flush()
        return errors


#: Driver of each ``--target``, made with (node, timeout_s).
DRIVERS: dict[str, Callable[[str, float], _Driver]] = {"memlookup": MemlookupDriver, "redis": RedisDriver}
