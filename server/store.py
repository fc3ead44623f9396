"""The in-memory table: string keys to string values, with expiry.

Keys live in a fixed number of buckets chosen by ``hash(key)``. That costs one
list index per operation and buys a ``keys`` scan whose cursor is a position
fixed by the hash: a key present for the whole scan is returned exactly once,
no matter how the table changes between pages, and no page needs a sorted
copy of the table. A position is a bucket and a sub-bucket (the next bits of
the hash), so that a page can end inside a large bucket.

Deadlines are wall-clock seconds (``time.time``) so that they keep their
meaning across a restart. A key past its deadline is gone: every read checks,
and :meth:`Store.sweep` removes expired keys nobody asks for.
"""

from __future__ import annotations

import heapq
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator

from server.glob_match import compile_glob

#: Number of hash buckets; a power of two.
BUCKETS = 4096
_MASK = BUCKETS - 1

#: Sub-buckets a scan splits a large bucket into, by the hash bits above the
#: bucket's; a power of two. A scan position is ``bucket * SUB_BUCKETS + sub``.
SUB_BUCKETS = 256
_BUCKET_BITS = BUCKETS.bit_length() - 1

#: Scan positions: a cursor needs this many values (2**20).
SCAN_POSITIONS = BUCKETS * SUB_BUCKETS

#: A bucket with at most this many keys is scanned in one step. A larger one
#: is too if the pattern is ``*`` (nothing to match), or if the keys matched
#: so far in the page say it fits in the time left; otherwise it is scanned
#: in sub-buckets, so that the page can stop inside it (for the price of a
#: pass sorting its keys into sub-buckets).
WHOLE_BUCKET_KEYS = 16

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

#: Bytes a table entry costs beyond its key and value objects (dict slot,
#: index, expiry bookkeeping). An estimate, for the memory figure in stats.
ENTRY_OVERHEAD_BYTES = 64


class NotAnInteger(Exception):
    """``incr`` found a value that is not a decimal int64, or would overflow."""


def _size(key: str, value: str) -> int:
    return sys.getsizeof(key) + sys.getsizeof(value) + ENTRY_OVERHEAD_BYTES


class Store:
    """A dict of str to str with per-key deadlines.

    Args:
        clock: returns the current wall-clock time in seconds; tests pass a
            fake one.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._buckets: list[dict[str, str]] = [{} for _ in range(BUCKETS)]
        self._deadlines: dict[str, float] = {}
        self._expiry_heap: list[tuple[float, str]] = []
        self._count = 0
        self.memory_bytes = 0
        self.expired_total = 0

    # -- reading ---------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    @property
    def keys_with_ttl(self) -> int:
        """How many keys have a deadline (some may have passed it already)."""
        return len(self._deadlines)

    def get(self, key: str) -> str | None:
        """The value of ``key``, or None if it is missing or expired."""
        value = self._buckets[hash(key) & _MASK].get(key)
        if value is not None and self._deadlines and self._expired(key):
            return None
        return value

    def exists(self, key: str) -> bool:
        return self.get(key) is not None

    def ttl(self, key: str) -> float:
        """Seconds ``key`` has left; -1 if it never expires, -2 if it is missing."""
        if self.get(key) is None:
            return -2
        deadline = self._deadlines.get(key)
        if deadline is None:
            return -1
        return max(0.0, deadline - self._clock())

    def deadline(self, key: str) -> float | None:
        """The wall-clock second ``key`` expires at, or None."""
        return self._deadlines.get(key)

    def scan(self, cursor: int, pattern: str, count: int, deadline: float | None = None,
             max_bytes: int | None = None) -> tuple[int, list[str]]:
        """One page of the live keys matching the glob ``pattern``.

        Starts at scan position ``cursor`` and takes steps (a whole bucket,
        or one sub-bucket of a large one) until at least ``count`` keys were
        examined, or ``time.perf_counter()`` reached ``deadline``, or the
        keys found take ``max_bytes`` (UTF-8); always at least one step.
        Returns ``(next_cursor, keys)``; ``next_cursor`` is 0 when the scan
        is complete. A step may overrun ``deadline`` by what a whole bucket
        costs when the page's keys so far predicted it would not.

        Raises:
            PatternTooComplex: see :func:`server.glob_match.compile_glob`.
        """
        match = compile_glob(pattern)
        now = self._clock()
        deadlines = self._deadlines
        found: list[str] = []
        examined = found_bytes = 0
        clock = time.perf_counter
        started = clock()
        position = cursor
        while position < SCAN_POSITIONS:
            bucket, sub = divmod(position, SUB_BUCKETS)
            entries = self._buckets[bucket]
            steps: Iterable[tuple[int, Collection[str]]]
            if sub == 0 and (len(entries) <= WHOLE_BUCKET_KEYS or deadline is None or match is None or (
                    examined and (clock() - started) / examined * len(entries) < deadline - clock())):
                steps = ((-1, entries),)  # -1: the whole bucket
            else:
                steps = _sub_buckets(entries, sub)
            position = (bucket + 1) * SUB_BUCKETS
            for step_sub, keys in steps:
                examined += len(keys)
                for key in keys:
                    if match is not None and not match(key):
                        continue
                    deadline_s = deadlines.get(key) if deadlines else None
                    if deadline_s is None or deadline_s > now:
                        found.append(key)
                        if max_bytes is not None:
                            found_bytes += len(key) if key.isascii() else len(key.encode("utf-8", "surrogatepass"))
                if (examined >= count or (deadline is not None and clock() >= deadline)
                        or (max_bytes is not None and found_bytes >= max_bytes)):
                    if 0 <= step_sub < SUB_BUCKETS - 1:
                        position = bucket * SUB_BUCKETS + step_sub + 1
                    return (0 if position >= SCAN_POSITIONS else position), found
        return 0, found

    def items(self) -> Iterator[tuple[str, str, float | None]]:
        """Every live ``(key, value, deadline)``, for snapshots and rebalancing."""
        now = self._clock()
        deadlines = self._deadlines
        for entries in self._buckets:
            for key, value in list(entries.items()):
                deadline = deadlines.get(key)
                if deadline is None or deadline > now:
                    yield key, value, deadline

    # -- writing ---------------------------------------------------------

    def set(
        self,
        key: str,
        value: str,
        ttl_s: float | None = None,
        nx: bool = False,
        xx: bool = False,
    ) -> bool:
        """Store ``value`` under ``key``; returns False if a condition failed.

        ``nx``: only if the key is absent. ``xx``: only if present. A set
        without ``ttl_s`` removes any deadline the key had (as Redis SET does).
        """
        if nx or xx:
            present = self.get(key) is not None
            if (nx and present) or (xx and not present):
                return False
        self.put(key, value, None if ttl_s is None else self._clock() + ttl_s)
        return True

    def put(self, key: str, value: str, deadline: float | None) -> None:
        """Store ``value`` with an absolute deadline (None: never expires)."""
        entries = self._buckets[hash(key) & _MASK]
        old = entries.get(key)
        if old is None:
            self._count += 1
            self.memory_bytes += _size(key, value)
        else:
            self.memory_bytes += sys.getsizeof(value) - sys.getsizeof(old)
        entries[key] = value
        if deadline is None:
            if self._deadlines:
                self._deadlines.pop(key, None)
        else:
            self._deadlines[key] = deadline
            heapq.heappush(self._expiry_heap, (deadline, key))

    def load(self, entries: Iterable[tuple[str, str | None, float | None]], now: float) -> None:
        """Apply saved ``(key, value, deadline)`` entries in order (persistence loads with this).

        ``value`` None deletes the key, and so does a deadline not after
        ``now``: the key expired while it was on disk. The result is what
        :meth:`put` and :meth:`delete` one by one would give, but the loop does
        only the dict work, and the key count and memory figure are summed
        once at the end: loading millions of keys is most of a restart.
        """
        buckets, deadlines, heap = self._buckets, self._deadlines, self._expiry_heap
        for key, value, deadline in entries:
            bucket = buckets[hash(key) & _MASK]
            if value is None or (deadline is not None and deadline <= now):
                if bucket.pop(key, None) is not None and deadlines:
                    deadlines.pop(key, None)
                continue
            bucket[key] = value
            if deadline is None:
                if deadlines:
                    deadlines.pop(key, None)
            else:
                deadlines[key] = deadline
                heap.append((deadline, key))
        heapq.heapify(heap)
        getsizeof = sys.getsizeof
        self._count = sum(map(len, buckets))
        self.memory_bytes = self._count * ENTRY_OVERHEAD_BYTES + sum(
            sum(map(getsizeof, bucket)) + sum(map(getsizeof, bucket.values())) for bucket in buckets
        )

    def set_many(self, pairs: dict[str, str], ttl_s: float | None = None) -> None:
        deadline = None if ttl_s is None else self._clock() + ttl_s
        for key, value in pairs.items():
            self.put(key, value, deadline)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there (and not expired)."""
        present = self.get(key) is not None
        if present:
            self._remove(key)
        return present

    def incr(self, key: str, delta: int) -> int:
        """Add ``delta`` to the integer at ``key`` (missing counts as 0).

        The deadline, if any, is kept, as Redis INCR does.

        Raises:
            NotAnInteger: the value is not a decimal int64, or the sum overflows.
        """
        current = self.get(key)
        if current is None:
            number = 0
        else:
            if not _is_decimal(current):
                raise NotAnInteger(f"value of {key[:64]!r} is not an integer")
            number = int(current)
            if not INT64_MIN <= number <= INT64_MAX:
                raise NotAnInteger(f"value of {key[:64]!r} is out of the int64 range")
        result = number + delta
        if not INT64_MIN <= result <= INT64_MAX:
            raise NotAnInteger("increment would overflow int64")
        self.put(key, str(result), self._deadlines.get(key))
        return result

    def cas(self, key: str, expected: str, value: str, ttl_s: float | None = None) -> bool:
        """Set ``key`` to ``value`` only if its current value equals ``expected``."""
        if self.get(key) != expected:
            return False
        self.put(key, value, None if ttl_s is None else self._clock() + ttl_s)
        return True

    # -- expiry ----------------------------------------------------------

    def sweep(self, limit: int = 1000) -> int:
        """Remove up to ``limit`` keys whose deadline has passed; returns how many."""
        now = self._clock()
        heap = self._expiry_heap
        removed = 0
        while heap and heap[0][0] <= now and removed < limit:
            deadline, key = heapq.heappop(heap)
            if self._deadlines.get(key) == deadline:  # else: a stale heap entry
                self._remove(key)
                self.expired_total += 1
                removed += 1
        if len(heap) > 2 * len(self._deadlines) + 1024:
            # Overwritten deadlines leave stale entries behind; drop them.
            self._expiry_heap = [(d, k) for k, d in self._deadlines.items()]
            heapq.heapify(self._expiry_heap)
        return removed

    def soonest_expiring(self) -> str | None:
        """The key with the nearest deadline (volatile-ttl eviction), or None."""
        heap, deadlines = self._expiry_heap, self._deadlines
        while heap:
            deadline, key = heap[0]
            if deadlines.get(key) == deadline:
                return key
            heapq.heappop(heap)  # a stale entry: the key was deleted or re-set
        return None

    def _expired(self, key: str) -> bool:
        deadline = self._deadlines.get(key)
        if deadline is not None and deadline <= self._clock():
            self._remove(key)
            self.expired_total += 1
            return True
        return False

    def _remove(self, key: str) -> None:
        entries = self._buckets[hash(key) & _MASK]
        value = entries.pop(key)
        self._count -= 1
        self.memory_bytes -= _size(key, value)
        self._deadlines.pop(key, None)


def _sub_buckets(entries: dict[str, str], first: int) -> list[tuple[int, list[str]]]:
    """The keys of a bucket by sub-bucket, from sub-bucket ``first`` on, in order."""
    subs: dict[int, list[str]] = {}
    mask = SUB_BUCKETS - 1
    for key in entries:
        sub = (hash(key) >> _BUCKET_BITS) & mask
        if sub >= first:
            subs.setdefault(sub, []).append(key)
    return sorted(subs.items())


def _is_decimal(text: str) -> bool:
    digits = text[1:] if text[:1] == "-" else text
    return digits.isascii() and digits.isdigit() and len(digits) <= 20


