"""A blocking face on the asyncio clients, so that one test runs against both kinds.

``Awaited(AsyncClient(...), runner)`` has the async client's methods without
``await``: each call really awaits the coroutine to its end on the test's
event loop (``runner``), an async iterator (``keys()``) is read to its end,
an ``AsyncPipeline`` gets the same face, and ``with`` means ``async with``.
Nothing is faked: every request goes through the async client's own
transports, on the same loop, one call at a time.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any


async def _read(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


class Awaited:
    """``target``'s methods, each run to completion on ``runner``."""

    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        self._target = target
        self._runner = runner

    def _wrap(self, result: Any) -> Any:
        if inspect.iscoroutine(result):
            return self._wrap(self._runner.run(result))
        if inspect.isasyncgen(result):
            return iter(self._runner.run(_read(result)))
        if result is self._target:
            return self  # a pipeline's chaining
        if hasattr(result, "__aenter__"):
            return Awaited(result, self._runner)  # a pipeline
        return result

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._wrap(value(*args, **kwargs))

        return call

    def __len__(self) -> int:
        return len(self._target)

    def __enter__(self) -> Awaited:
        self._runner.run(self._target.__aenter__())
        return self

    def __exit__(self, *exc: Any) -> None:
        self._runner.run(self._target.__aexit__(*exc))

    def __repr__(self) -> str:
        return f"Awaited({self._target!r})"


def client_factory(kind: str, runner: asyncio.Runner) -> Callable[..., Any]:
    """``make(node, **options)``: a ``Client`` (kind "Client"), or an ``AsyncClient``
    behind :class:`Awaited` (kind "AsyncClient"); likewise the cluster clients."""
    import client

    made = getattr(client, kind)

    def make(*args: Any, **kwargs: Any) -> Any:
        table = made(*args, **kwargs)
        return Awaited(table, runner) if kind.startswith("Async") else table

    return make


def runner() -> Iterator[asyncio.Runner]:
    """An event loop for one test (closed at its end)."""
    with asyncio.Runner() as loop:
        yield loop
