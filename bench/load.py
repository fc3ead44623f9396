"""Run the same work in several client processes at once and add up what they did."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def rate(worker: Callable[..., None], args: tuple[Any, ...], clients: int, seconds: float) -> float:
    """Run ``worker(*args, seed, queue)`` in ``clients`` processes; total per second.

    Each worker runs for ``seconds`` and puts the count of what it did on the queue.
    """
    out: multiprocessing.Queue[int] = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(*args, seed, out)) for seed in range(clients)]
    for proc in procs:
        proc.start()
    total = sum(out.get() for _ in procs)
    for proc in procs:
        proc.join()
    return total / seconds
