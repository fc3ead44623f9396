"""Every operation as a method, written once: the :class:`Commands` mixin.

Each method checks nothing and sends nothing itself: it names its
:class:`~client.requests.Command` (the op's row of :mod:`common.ops`, with how
its reply becomes the return value) and ends in ``self._execute(...)``. The
classes that send supply ``_execute``: :class:`client.Client` sends in
lockstep, :class:`client.ClusterClient` routes by the op's
:class:`~common.ops.Route`; the same methods, generated from these by
``python3 -m client.generate``, await (:mod:`client.commands_async`, for
:class:`client.AsyncClient` and :class:`client.AsyncClusterClient`) or queue
and return the pipeline (:mod:`client.commands_pipeline`, for pipelines and
streams). So the docstrings below are the manual of every client.

Adding an operation: its row in :mod:`common.ops`, its command and method
here, then ``python3 -m client.generate``; ``tests/test_ops_table.py`` fails
until every client has it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from client.requests import Command
from common.ops import OPS

T = TypeVar("T")


def _is_pong(payload: Any) -> bool:
    return bool(payload == "PONG")


def _page(payload: Any) -> tuple[int, list[str]]:
    next_cursor, keys = payload
    return next_cursor, keys


def _nothing(payload: Any) -> None:
    return None


PING: Command[bool] = Command(OPS["ping"], _is_pong)
GET: Command[str | None] = Command(OPS["get"], missing=None)
SET: Command[bool] = Command(OPS["set"])
DEL: Command[bool] = Command(OPS["del"])
EXISTS: Command[bool] = Command(OPS["exists"], missing=False)
MGET: Command[list[str | None]] = Command(OPS["mget"])
MSET: Command[None] = Command(OPS["mset"], _nothing)
KEYS: Command[tuple[int, list[str]]] = Command(OPS["keys"], _page)
TTL: Command[float] = Command(OPS["ttl"], missing=-2)
INCR: Command[int] = Command(OPS["incr"])
CAS: Command[bool] = Command(OPS["cas"])
STATS: Command[dict[str, Any]] = Command(OPS["stats"])

#: Every client command, by its op's wire name.
COMMANDS: dict[str, Command[Any]] = {
    command.name: command for command in (PING, GET, SET, DEL, EXISTS, MGET, MSET, KEYS, TTL, INCR, CAS, STATS)
}


class Commands:
    """The operations of a memlookup table, each a method (see the module docstring)."""

    #: Whether one ``scan`` may return a key more than once (a cluster: once per
    #: copy); :meth:`keys` then remembers what it returned.
    _scan_repeats_keys: ClassVar[bool] = False

    def _execute(self, command: Command[T], *args: Any, **options: Any) -> T:
        """Send ``command`` with ``args`` (in the op's order) and ``options``; its result."""
        raise NotImplementedError

    def ping(self) -> bool:
        """True when the node answers (raises :class:`NodeUnavailableError` otherwise)."""
        return self._execute(PING)

    def get(self, key: str) -> str | None:
        """The value stored under ``key``, or None if there is none."""
        return self._execute(GET, key)

    def set(self, key: str, value: str, ttl_s: float | None = None, nx: bool = False, xx: bool = False) -> bool:
        """Store ``value`` under ``key``.

        Args:
            ttl_s: expire the key after this many seconds (None: never; a set
                without it removes any earlier expiry).
            nx: only if the key does not exist.
            xx: only if the key exists.

        Returns:
            True if stored, False if ``nx``/``xx`` prevented it.
        """
        return self._execute(SET, key, value, ttl_s=ttl_s, nx=nx, xx=xx)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        return self._execute(DEL, key)

    def exists(self, key: str) -> bool:
        """True if ``key`` exists (and has not expired)."""
        return self._execute(EXISTS, key)

    def mget(self, keys: Sequence[str]) -> list[str | None]:
        """The values of ``keys``, in order, None for each missing one."""
        return self._execute(MGET, keys)

    def mset(self, pairs: Mapping[str, str], ttl_s: float | None = None) -> None:
        """Store every pair at once: all are stored, or none (on any error)."""
        return self._execute(MSET, pairs, ttl_s=ttl_s)

    def scan(self, cursor: int = 0, pattern: str = "*", count: int | None = None) -> tuple[int, list[str]]:
        """One page of keys matching the glob ``pattern``: ``(next_cursor, keys)``.

        Start with cursor 0 and pass each returned cursor back until it is 0
        again. A key that exists for the whole scan is returned exactly once;
        keys added or removed meanwhile may or may not be. ``count`` is a hint
        (None: ``common.limits.DEFAULT_SCAN_COUNT``, 1000). Cursors are valid
        only within one run of the server.
        """
        return self._execute(KEYS, pattern, cursor, count)

    def ttl(self, key: str) -> float:
        """Seconds until ``key`` expires; -1 if it never does, -2 if it does not exist."""
        return self._execute(TTL, key)

    def incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to the decimal integer at ``key`` (a missing key counts as 0).

        Raises:
            NotAnIntegerError: the value is not an integer, or the result
                leaves the 64-bit signed range.
        """
        return self._execute(INCR, key, delta)

    def cas(self, key: str, expected: str, value: str, ttl_s: float | None = None) -> bool:
        """Compare-and-set: store ``value`` only if the current value is ``expected``.

        Like ``set``, a swap without ``ttl_s`` leaves the key with no expiry.

        Returns:
            True if stored; False if the key is missing or holds something else.
        """
        return self._execute(CAS, key, expected, value, ttl_s=ttl_s)

    def stats(self) -> dict[str, Any]:
        """The node's counters: keys, memory, operations, uptime, version, limits."""
        return self._execute(STATS)

    def keys(self, pattern: str = "*", count: int | None = None) -> Iterator[str]:
        """Every key matching the glob ``pattern`` (``*``, ``?``, ``[abc]``, ``[!abc]``).

        Fetched a :meth:`scan` page at a time, ``count`` keys a page.
        """
        seen: set[str] | None = set() if self._scan_repeats_keys else None
        cursor = 0
        while True:
            cursor, page = self.scan(cursor, pattern, count)
            for key in page:
                if seen is not None:
                    if key in seen:
                        continue
                    seen.add(key)
                yield key
            if cursor == 0:
                return
