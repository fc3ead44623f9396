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

Every write stores a version with the key, issued by the table's hybrid
logical clock (server/clock.py), and a delete leaves a *tombstone*: the key
and the delete's version, without a value. Replicas compare versions to keep
the newer write (:meth:`Store.put_if_newer`); the tombstone is what stops an
older copy of a deleted key from bringing it back. Tombstones live apart from
the values (by bucket, so a versioned scan finds them at the key's scan
position), which keeps them out of every ordinary read with no check at all;
:meth:`Store.sweep` removes them once their delete is older than the grace
period (Cassandra's ``gc_grace_seconds``).
"""

from __future__ import annotations

import heapq
import itertools
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

import msgpack

from common.limits import text_bytes
from common.versions import ZERO_VERSION, Record, Version
from server.clock import HybridLogicalClock
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

#: Bytes a key's version costs: its slot in the versions dict, the tuple and
#: its ``ms`` int (the node name is one shared string). Measured 103 (Python's
#: allocations) and 101 (RSS) per key over 200,000 keys, ``python3
#: bench/memory_per_key.py``; the estimate keeps a margin above both.
VERSION_BYTES = 136

#: Bytes a table entry costs beyond its key and value objects (dict slot,
#: index, expiry bookkeeping, version). An estimate, for the memory figure in stats.
ENTRY_OVERHEAD_BYTES = 64 + VERSION_BYTES

#: Bytes a tombstone costs beyond its key object: its dict slot, its version,
#: its entry in the sweep's heap (measured: 198, as VERSION_BYTES).
TOMBSTONE_OVERHEAD_BYTES = 64 + VERSION_BYTES

#: What a key costs beyond the table's estimate once keys come and go, as the
#: memory cap counts it (server/memory.py): hash tables of the buckets and the
#: recency dict keep deleted slots and resize in steps, and the allocator
#: cannot always reuse what eviction freed. Measured: with 100-byte values
#: under allkeys-lru churn RSS grew about 517 bytes per key against an
#: estimate of 374 (see docs/BENCHMARKS.md, memory cap).
KEY_SLACK_BYTES = 192

#: Default ``--tombstone-grace-s``: how long a delete's tombstone is kept. A
#: replica that was away for longer may bring the deleted key back (it must
#: discard its data instead; docs/CLUSTER.md). Cassandra's gc_grace_seconds
#: is 10 days, for clusters whose nodes come back after days; one day fits
#: nodes restarted by Kubernetes or Compose, and bounds what deletes cost.
TOMBSTONE_GRACE_S = 86400.0


class NotAnInteger(Exception):
    """``incr`` found a value that is not a decimal int64, or would overflow."""


def _size(key: str, value: str) -> int:
    return sys.getsizeof(key) + sys.getsizeof(value) + ENTRY_OVERHEAD_BYTES


def _tombstone_size(key: str) -> int:
    return sys.getsizeof(key) + TOMBSTONE_OVERHEAD_BYTES


class Store:
    """A dict of str to str with per-key deadlines, versions and tombstones.

    Args:
        clock: returns the current wall-clock time in seconds; tests pass a
            fake one.
        hlc: the clock that versions writes; one named "" on ``clock`` when
            omitted (the server passes one named after its node).
        tombstone_grace_s: how long a tombstone is kept after its delete.
    """

    def __init__(self, clock: Callable[[], float] = time.time, hlc: HybridLogicalClock | None = None,
                 tombstone_grace_s: float = TOMBSTONE_GRACE_S) -> None:
        self._clock = clock
        self.hlc = hlc if hlc is not None else HybridLogicalClock("", clock)
        self.tombstone_grace_s = tombstone_grace_s
        self._buckets: list[dict[str, str]] = [{} for _ in range(BUCKETS)]
        self._deadlines: dict[str, float] = {}
        self._expiry_heap: list[tuple[float, str]] = []
        self._versions: dict[str, Version] = {}
        # Tombstones by bucket, made when a bucket first holds one; the
        # sweep's heap holds (the delete's ms, key).
        self._tombstones: dict[int, dict[str, Version]] = {}
        self._tombstone_heap: list[tuple[int, str]] = []
        self._count = 0
        #: Tombstones held (collected or not yet).
        self.tombstones = 0
        self.memory_bytes = 0
        self.expired_total = 0
        #: What the memory cap adds per key (:data:`KEY_SLACK_BYTES`).
        self.key_slack_bytes = KEY_SLACK_BYTES

    # -- reading ---------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    @property
    def slack_bytes(self) -> int:
        """What the memory cap adds to :attr:`memory_bytes`: :attr:`key_slack_bytes` a key."""
        return self._count * self.key_slack_bytes

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

    def version(self, key: str) -> Version | None:
        """The version of the live ``key``, or None if it is missing or expired."""
        if self.get(key) is None:
            return None
        return self._versions[key]

    def tombstone(self, key: str) -> Version | None:
        """The version of the delete that left ``key``'s tombstone, or None if it has none."""
        if not self.tombstones:
            return None
        bucket = self._tombstones.get(hash(key) & _MASK)
        return bucket.get(key) if bucket else None

    def record(self, key: str) -> Record | None:
        """``key``'s record, a tombstone's included; None if the table holds nothing for it."""
        value = self.get(key)
        if value is not None:
            return key, value, self._versions[key], self._deadlines.get(key)
        version = self.tombstone(key)
        return None if version is None else (key, None, version, None)

    def records(self) -> Iterator[Record]:
        """Every live key's record, then every tombstone's: what a snapshot holds."""
        now = self._clock()
        deadlines, versions = self._deadlines, self._versions
        for entries in self._buckets:
            for key, value in list(entries.items()):
                deadline = deadlines.get(key)
                if deadline is None or deadline > now:
                    yield key, value, versions[key], deadline
        for bucket in list(self._tombstones.values()):
            for key, version in list(bucket.items()):
                yield key, None, version, None

    def scan_records(self, cursor: int, count: int, deadline: float | None = None,
                     max_bytes: int | None = None) -> tuple[int, list[Record]]:
        """One page of every record, tombstones included, from scan position ``cursor``.

        The positions are those of :meth:`scan` (a key's record, live or a
        tombstone, is at its key's position), so a key held for the whole
        scan is returned exactly once. Steps are sub-buckets: a page stops
        after one once ``count`` records were examined, ``time.perf_counter()``
        reached ``deadline``, or the records' keys and values took
        ``max_bytes`` (UTF-8); always at least one step. Returns
        ``(next_cursor, records)``, ``next_cursor`` 0 at the end.
        """
        now = self._clock()
        deadlines, versions, tombstones = self._deadlines, self._versions, self._tombstones
        found: list[Record] = []
        examined = found_bytes = 0
        clock = time.perf_counter
        position = cursor
        while position < SCAN_POSITIONS:
            bucket, sub = divmod(position, SUB_BUCKETS)
            entries = self._buckets[bucket]
            buried = tombstones.get(bucket) or {}
            position = (bucket + 1) * SUB_BUCKETS
            if not entries and not buried:
                continue
            for step_sub, keys in _sub_buckets(itertools.chain(entries, buried) if buried else entries, sub):
                examined += len(keys)
                for key in keys:
                    value = entries.get(key)
                    if value is None:
                        record: Record = (key, None, buried[key], None)
                    else:
                        deadline_s = deadlines.get(key) if deadlines else None
                        if deadline_s is not None and deadline_s <= now:
                            continue
                        record = (key, value, versions[key], deadline_s)
                        found_bytes += text_bytes(value)
                    found.append(record)
                    found_bytes += text_bytes(key)
                if (examined >= count or (deadline is not None and clock() >= deadline)
                        or (max_bytes is not None and found_bytes >= max_bytes)):
                    if step_sub < SUB_BUCKETS - 1:
                        position = bucket * SUB_BUCKETS + step_sub + 1
                    return (0 if position >= SCAN_POSITIONS else position), found
        return 0, found

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

    def put(self, key: str, value: str, deadline: float | None, version: Version | None = None) -> None:
        """Store ``value`` with an absolute deadline (None: never expires) and ``version`` (None: a new one).

        A tombstone of the key is removed.
        """
        if version is None:
            version = self.hlc.issue()
        entries = self._buckets[hash(key) & _MASK]
        old = entries.get(key)
        if old is None:
            if self.tombstones:
                self._unbury(key)
            self._count += 1
            self.memory_bytes += _size(key, value)
        else:
            self.memory_bytes += sys.getsizeof(value) - sys.getsizeof(old)
        entries[key] = value
        self._versions[key] = version
        if deadline is None:
            if self._deadlines:
                self._deadlines.pop(key, None)
        else:
            self._deadlines[key] = deadline
            heapq.heappush(self._expiry_heap, (deadline, key))

    def put_if_newer(self, key: str, value: str | None, version: Version, deadline: float | None) -> bool:
        """Apply a record copied from another replica if ``version`` is newer than what the table holds.

        ``value`` None is a delete: the key's value goes and a tombstone with
        ``version`` stays. A value whose ``deadline`` has passed removes an
        older value and leaves nothing (every replica computes the same
        deadline). Either way the clock moves past ``version``. Returns True
        if the record was applied, False if the table holds the same or a
        newer version (a value or a tombstone).

        Two different records of one version cannot come from clocks (each
        version is issued once), but a faulty peer could send them; so that
        replicas still agree whatever the order they arrive in, a tie goes
        to the delete, then to the larger value (as in Cassandra).
        """
        return put_record_if_newer(self, key, value, version, deadline)

    def load(self, entries: Iterable[tuple[str, str | None, Version | None, float | None]], now: float) -> None:
        """Apply saved ``(key, value, version, deadline)`` entries in order (persistence loads with this).

        ``value`` None with a version leaves a tombstone (unless its grace
        period is over); ``value`` None without one removes the key, and so
        does a deadline not after ``now``: the key expired while it was on
        disk. The result is what :meth:`put`, :meth:`_bury` and :meth:`_drop`
        one by one would give, but the loop does only the dict work, and the
        counts and memory figure are summed once at the end: loading millions
        of keys is most of a restart. The clock then moves past the newest
        version loaded, so that this run's writes are newer than every one
        on disk.
        """
        buckets, deadlines, heap, versions = self._buckets, self._deadlines, self._expiry_heap, self._versions
        tombstones = self._tombstones
        collected_before_ms = (now - self.tombstone_grace_s) * 1000
        newest = ZERO_VERSION
        nodes: dict[str, str] = {}  # one string per node name, not one per version
        for key, value, version, deadline in entries:
            index = hash(key) & _MASK
            if version is not None:
                node = version[2]
                version = (version[0], version[1], nodes.setdefault(node, node))
                if version > newest:
                    newest = version
            if tombstones:
                buried = tombstones.get(index)
                if buried:
                    buried.pop(key, None)
            bucket = buckets[index]
            if value is None or (deadline is not None and deadline <= now):
                if bucket.pop(key, None) is not None:
                    del versions[key]
                    if deadlines:
                        deadlines.pop(key, None)
                if value is None and version is not None and version[0] > collected_before_ms:
                    tombstones.setdefault(index, {})[key] = version
                continue
            bucket[key] = value
            versions[key] = version if version is not None else ZERO_VERSION
            if deadline is None:
                if deadlines:
                    deadlines.pop(key, None)
            else:
                deadlines[key] = deadline
                heap.append((deadline, key))
        heapq.heapify(heap)
        self._tombstone_heap = [(version[0], key) for bucket in tombstones.values() for key, version in bucket.items()]
        heapq.heapify(self._tombstone_heap)
        self.hlc.observe(newest)
        getsizeof = sys.getsizeof
        self._count = sum(map(len, buckets))
        self.tombstones = sum(map(len, tombstones.values()))
        self.memory_bytes = self._count * ENTRY_OVERHEAD_BYTES + sum(
            sum(map(getsizeof, bucket)) + sum(map(getsizeof, bucket.values())) for bucket in buckets
        ) + self.tombstones * TOMBSTONE_OVERHEAD_BYTES + sum(
            sum(map(getsizeof, bucket)) for bucket in tombstones.values())

    def load_payloads(self, payloads: Iterable[bytes | memoryview], now: float,
                      add_replies: Callable[[Any], object]) -> None:
        """Apply the entries of payloads ``[entries, replies]`` (the current snapshot and journal formats,
        server/records.py) in order, as :meth:`load`; each payload's replies go to ``add_replies``.

        The compact table reads the entries from the bytes without decoding them into objects.

        Raises:
            ValueError, TypeError: a payload does not decode as one of that shape (the payloads before it are
                applied).
        """
        def entries() -> Iterator[tuple[str, str | None, Version | None, float | None]]:
            for payload in payloads:
                table, replies = msgpack.unpackb(payload, raw=False, use_list=False)
                add_replies(replies)
                yield from table

        self.load(entries(), now)

    def snapshot_payloads(self, max_entries: int) -> Iterator[bytes]:
        """:meth:`records` as snapshot payloads ``[entries, []]`` of up to ``max_entries`` entries each.

        Each payload is packed when the iteration reaches it, so that a
        snapshot can be written in slices while the table changes; the
        compact table packs them from its records with the very same bytes.
        """
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        records = self.records()
        while table := list(itertools.islice(records, max_entries)):
            yield msgpack.packb((table, ()))

    def set_many(self, pairs: dict[str, str], ttl_s: float | None = None) -> None:
        """Store every pair with one deadline and one version: an mset is one write, at one instant."""
        deadline = None if ttl_s is None else self._clock() + ttl_s
        version = self.hlc.issue()
        for key, value in pairs.items():
            self.put(key, value, deadline, version)

    def delete(self, key: str) -> bool:
        """Remove ``key``, leaving a tombstone; True if it was there (and not expired).

        A missing key leaves no tombstone: there is no value for it to outlive.
        """
        present = self.get(key) is not None
        if present:
            self._bury(key, self.hlc.issue())
        return present

    def evict(self, key: str) -> bool:
        """Remove ``key`` without a tombstone (the memory cap makes room); True if it was there.

        Not a delete: another replica's copy of the key is not outdated by it.
        """
        present = self.get(key) is not None
        if present:
            self._drop(key)
        return present

    def incr(self, key: str, delta: int) -> int:
        """Add ``delta`` to the integer at ``key`` (missing counts as 0).

        The deadline, if any, is kept, as Redis INCR does.

        Raises:
            NotAnInteger: the value is not a decimal int64, or the sum overflows.
        """
        result = incremented(key, self.get(key), delta)
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
        """Remove up to ``limit`` expired keys, and as many tombstones past their grace; returns how many keys."""
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
        if self._tombstone_heap:
            self._collect_tombstones((now - self.tombstone_grace_s) * 1000, limit)
        return removed

    def _collect_tombstones(self, before_ms: float, limit: int) -> None:
        """Remove up to ``limit`` tombstones whose delete is older than ``before_ms``.

        Not journaled: a restart drops them by the same rule (:meth:`load`).
        """
        heap = self._tombstone_heap
        collected = 0
        while heap and heap[0][0] < before_ms and collected < limit:
            ms, key = heapq.heappop(heap)
            version = self.tombstone(key)
            if version is not None and version[0] == ms:  # else: stale (the key was set or deleted again)
                self._unbury(key)
                collected += 1
        if len(heap) > 2 * self.tombstones + 1024:
            self._tombstone_heap = [(v[0], k) for bucket in self._tombstones.values() for k, v in bucket.items()]
            heapq.heapify(self._tombstone_heap)

    def new_key_bytes(self, key: str) -> int:
        """What a new ``key`` adds to :attr:`memory_bytes` besides its value (the memory cap's estimate)."""
        return sys.getsizeof(key) + ENTRY_OVERHEAD_BYTES

    def value_bytes(self, value: str) -> int:
        """What ``value`` adds to :attr:`memory_bytes` (the memory cap's estimate)."""
        return sys.getsizeof(value)

    def track_recency(self) -> bool:
        """Whether this table keeps its keys in order of use for allkeys-lru: this one does not.

        (server/eviction.py then keeps the order itself; the compact table keeps it.)
        """
        return False

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
        """Remove the live ``key`` (expiry; the others below call it): no tombstone, not journaled."""
        entries = self._buckets[hash(key) & _MASK]
        value = entries.pop(key)
        del self._versions[key]
        self._count -= 1
        self.memory_bytes -= _size(key, value)
        self._deadlines.pop(key, None)

    def _held(self, key: str) -> tuple[str, str | None, Version | None, float | None]:
        """What the table holds for ``key``, expired or not: ``(key, value, version, deadline)``.

        ``value`` None: a tombstone of ``version``, or nothing at all (version None).
        """
        value = self._buckets[hash(key) & _MASK].get(key)
        if value is not None:
            return key, value, self._versions[key], self._deadlines.get(key)
        return key, None, self.tombstone(key), None

    def _forget(self, key: str) -> None:
        """Remove whatever the table holds for ``key``, expired or not: no tombstone, not journaled."""
        if key in self._buckets[hash(key) & _MASK]:
            self._remove(key)
        self._unbury(key)

    def _drop(self, key: str) -> None:
        """Remove the live ``key`` without a tombstone (a change a journal records: see JournaledStore)."""
        self._remove(key)

    def _bury(self, key: str, version: Version) -> None:
        """Replace whatever the table holds for ``key`` by a tombstone of ``version``."""
        index = hash(key) & _MASK
        if key in self._buckets[index]:
            self._remove(key)
        bucket = self._tombstones.get(index)
        if bucket is None:
            bucket = self._tombstones[index] = {}
        if key not in bucket:
            self.tombstones += 1
            self.memory_bytes += _tombstone_size(key)
        bucket[key] = version
        heapq.heappush(self._tombstone_heap, (version[0], key))

    def _unbury(self, key: str) -> None:
        """Remove ``key``'s tombstone, if it has one."""
        index = hash(key) & _MASK
        bucket = self._tombstones.get(index)
        if bucket and bucket.pop(key, None) is not None:
            self.tombstones -= 1
            self.memory_bytes -= _tombstone_size(key)
            if not bucket:
                del self._tombstones[index]


def _sub_buckets(keys: Iterable[str], first: int) -> list[tuple[int, list[str]]]:
    """The keys of a bucket by sub-bucket, from sub-bucket ``first`` on, in order."""
    subs: dict[int, list[str]] = {}
    mask = SUB_BUCKETS - 1
    for key in keys:
        sub = (hash(key) >> _BUCKET_BITS) & mask
        if sub >= first:
            subs.setdefault(sub, []).append(key)
    return sorted(subs.items())


def put_record_if_newer(table: Store, key: str, value: str | None, version: Version,
                        deadline: float | None) -> bool:
    """:meth:`Store.put_if_newer` on ``table``, either table (the compact one calls it too):
    the replication rule written once."""
    table.hlc.observe(version)
    live = table.get(key)
    current = table.version(key) if live is not None else table.tombstone(key)
    if current is not None and (version < current or (version == current and (
            live is None or (value is not None and value <= live)))):
        return False
    if value is None:
        table._bury(key, version)
    elif deadline is not None and deadline <= table._clock():
        if live is not None:
            table._drop(key)
    else:
        table.put(key, value, deadline, version)
    return True


def incremented(key: str, current: str | None, delta: int) -> int:
    """``incr``'s sum: ``current`` (the value at ``key``; None counts as 0) plus ``delta``.

    Raises:
        NotAnInteger: ``current`` is not a decimal int64, or the sum overflows.
    """
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
    return result


def _is_decimal(text: str) -> bool:
    digits = text[1:] if text[:1] == "-" else text
    return digits.isascii() and digits.isdigit() and len(digits) <= 20


