"""The memory cap: ``--max-memory`` and what happens when it is reached.

The limit counts the whole server, as its resident memory (RSS) will show:
what the process used before it held any data (measured at start, plus
:data:`RESERVE_BYTES` for the reply cache and socket buffers), the table's
own estimate (:attr:`server.store.Store.memory_bytes`, which measured at or
above the real growth of RSS for values of 1 byte to 100 KB), and the LRU
bookkeeping. Before a write is applied, :meth:`MemoryGuard.make_room` checks
that it fits; if it does not, the eviction policy decides:

``noeviction``
    the write is refused with ``OUT_OF_MEMORY`` (``error: out of memory``);
    reads and deletes still work, as in Redis.
``allkeys-lru``
    the least recently used keys are removed until the write fits. Recency is
    exact: every read or write of a key moves it to the end of an ordered
    dict (about 100 bytes per key, counted in the limit). Keys nobody touched
    since the server started are evicted first.
``volatile-ttl``
    keys with a TTL are removed, nearest deadline first; with none left,
    writes are refused as under ``noeviction``.

Replies the server holds for clients count too (server/output.py). Of the
headroom (the limit minus what the empty server uses) writes leave an eighth
free, so that a full table can still be read: the largest reply is half of
that (building a reply takes twice its size for a moment), and so is what one
peer may have queued; all peers together may have a quarter of the headroom
queued. Before a large reply is built, room is made for twice its size as
for a write (evicting under an evicting policy); if there is none it is
refused (``OUT_OF_MEMORY``).

Nothing here runs unless ``--max-memory`` is set: the guard wraps the
handler's write (and, for LRU, read) operations only then.
"""

from __future__ import annotations

import ctypes
import logging
import re
import sys
from collections import OrderedDict
from typing import Any, Callable, Iterable

from common.protocol import Status
from common.limits import SMALL_REPLY_BYTES
from server.handler import Handler, Refused, _rss_bytes
from server.output import OutputQueue
from server.store import ENTRY_OVERHEAD_BYTES, Store

log = logging.getLogger(__name__)

#: Bytes kept free beyond the start-up footprint for what grows with use but
#: not with the data: the 10,000 remembered write replies, socket buffers.
RESERVE_BYTES = 4 * 1024 * 1024

#: What tracking one key's recency costs under allkeys-lru (ordered dict node
#: and slot), measured with :func:`tests` in ``tests/test_security_memory.py``.
LRU_ENTRY_BYTES = 100

#: What a key costs beyond the table's estimate once keys come and go: hash
#: tables of the buckets and the recency dict keep deleted slots and resize in
#: steps, and the allocator cannot always reuse what eviction freed. Measured:
#: with 100-byte values under allkeys-lru churn RSS grew about 517 bytes per
#: key against an estimate of 374 (see docs/BENCHMARKS.md, memory cap).
KEY_SLACK_BYTES = 192

#: Bytes ``incr`` may add besides the per-key costs: key and a 20-digit number.
INCR_BYTES = 128

POLICIES = ("noeviction", "allkeys-lru", "volatile-ttl")

#: Under a cap, writes leave 1/REPLY_SHARE of the headroom free for replies;
#: half of it is the largest reply and one peer's output budget. All peers'
#: queued replies may take at most 1/OUTPUT_SHARE of the headroom.
REPLY_SHARE = 8
OUTPUT_SHARE = 4

#: glibc's mmap threshold, pinned: see :func:`pin_malloc_thresholds`.
MALLOC_THRESHOLD_BYTES = 128 * 1024

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """A byte count written like Redis's maxmemory: ``100mb``, ``2gb``, ``1k``, ``5000``.

    ``k``, ``m``, ``g``, ``t`` are powers of 1000; ``kb``, ``mb``, ``gb``,
    ``tb`` (and ``kib``, ``mib``...) are powers of 1024.

    Raises:
        ValueError: not a size.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size in bytes (like 500000, 100mb or 2gb)")
    number, unit, binary = int(match.group(1)), match.group(2).lower(), match.group(3).lower()
    if not unit:
        if binary not in ("", "b"):
            raise ValueError(f"{text!r} is not a size in bytes (like 500000, 100mb or 2gb)")
        return number
    power = "kmgt".index(unit) + 1
    return number * (1024 if binary else 1000) ** power


def pin_malloc_thresholds(threshold_bytes: int = MALLOC_THRESHOLD_BYTES) -> bool:
    """Stop glibc from raising its mmap threshold; True if it took effect.

    glibc serves a large block with mmap (given back to the system when
    freed) until such a block is freed; then it raises the threshold, and
    later large values come from the heap, where eviction's holes fragment
    it. Measured with values of 10 B to 20 KB under allkeys-lru at 64 MiB:
    RSS peaked at 72.6 MB (8% over) with the dynamic threshold, 65.7 MB
    pinned. A no-op where the C library has no ``mallopt``.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, threshold_bytes)) and bool(mallopt(m_trim_threshold, threshold_bytes))


class MemoryGuard:
    """Keeps the server under ``max_memory_bytes`` by refusing or evicting.

    Args:
        store: the table.
        max_memory_bytes: the limit for the whole process.
        policy: one of :data:`POLICIES`.
        baseline_bytes: what the process uses besides the table; measured
            from RSS now when omitted.
    """

    def __init__(self, store: Store, max_memory_bytes: int, policy: str = "noeviction",
                 baseline_bytes: int | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"eviction policy {policy!r} is not one of {', '.join(POLICIES)}")
        self.store = store
        self.max_memory_bytes = max_memory_bytes
        self.policy = policy
        if baseline_bytes is None:
            baseline_bytes = max(0, _rss_bytes() - store.memory_bytes) + RESERVE_BYTES
        self.baseline_bytes = baseline_bytes
        self.evicted_keys = 0
        self.refused_writes = 0
        self.refused_replies = 0
        self._recency: OrderedDict[str, None] | None = OrderedDict() if policy == "allkeys-lru" else None
        #: What a new key costs besides its strings, as :attr:`used_bytes` counts it.
        self._key_extra_bytes = ENTRY_OVERHEAD_BYTES + KEY_SLACK_BYTES + (
            LRU_ENTRY_BYTES if self._recency is not None else 0)
        self._scan_cursor = 0
        self._output: OutputQueue | None = None
        #: Bytes writes leave free for replies (see :meth:`count_output`).
        self.reply_reserve_bytes = 0

    # -- accounting --------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """The process's estimated memory use, as the limit counts it."""
        tracked = len(self._recency) * LRU_ENTRY_BYTES if self._recency is not None else 0
        output = self._output.held_bytes if self._output is not None else 0
        return self.baseline_bytes + self.store.memory_bytes + len(self.store) * KEY_SLACK_BYTES + tracked + output

    def count_output(self, handler: Handler, output: OutputQueue) -> None:
        """Count ``output``'s replies against the limit, and fit the budgets and replies under it."""
        self._output = output
        output.tracked_bytes = SMALL_REPLY_BYTES  # under a cap, every reply that may be large counts
        headroom = self.max_memory_bytes - self.baseline_bytes
        self.reply_reserve_bytes = headroom // REPLY_SHARE
        output.max_total_bytes = min(output.max_total_bytes, headroom // OUTPUT_SHARE)
        output.max_peer_bytes = min(output.max_peer_bytes, self.reply_reserve_bytes // 2)
        handler.cap_replies(output.max_peer_bytes, self.make_reply_room)

    def make_room(self, incoming_bytes: int) -> None:
        """Evict until ``incoming_bytes`` more fit under the limit, with the reply reserve free.

        Raises:
            Refused: ``OUT_OF_MEMORY`` when the policy forbids evicting, or
                nothing is left to evict.
        """
        if not self._room_for(incoming_bytes + self.reply_reserve_bytes):
            self.refused_writes += 1
            raise Refused(Status.OUT_OF_MEMORY, f"out of memory: the server is at its limit of "
                                                f"{self.max_memory_bytes} bytes (eviction policy {self.policy})")

    def make_reply_room(self, reply_bytes: int) -> None:
        """Evict, as for a write, until building a reply of ``reply_bytes`` fits.

        Raises:
            Refused: ``OUT_OF_MEMORY``, as :meth:`make_room`.
        """
        if not self._room_for(reply_bytes):
            self.refused_replies += 1
            raise Refused(Status.OUT_OF_MEMORY, f"out of memory: no room for a reply of {reply_bytes // 2} "
                                                f"bytes under the limit of {self.max_memory_bytes} bytes "
                                                f"(eviction policy {self.policy})")

    def _room_for(self, incoming_bytes: int) -> bool:
        """Evict until ``incoming_bytes`` more fit; False if they cannot."""
        # What could not fit even in an empty table must not empty it first.
        fits_at_all = self.baseline_bytes + incoming_bytes <= self.max_memory_bytes
        while self.used_bytes + incoming_bytes > self.max_memory_bytes:
            if not fits_at_all or not self._evict_one():
                return False
        return True

    def _evict_one(self) -> bool:
        store = self.store
        if self.policy == "volatile-ttl":
            key = store.soonest_expiring()
            if key is None:
                return False
            store.delete(key)
            self.evicted_keys += 1
            return True
        if self.policy != "allkeys-lru":
            return False
        recency = self._recency
        assert recency is not None
        # Keys untouched since start (loaded from disk) are older than any tracked one.
        if len(store) > len(recency) and self._evict_untracked():
            return True
        while recency:
            key, _ = recency.popitem(last=False)
            if store.delete(key):
                self.evicted_keys += 1
                return True
        return self._evict_untracked()

    def _evict_untracked(self) -> bool:
        recency = self._recency
        for _ in range(2):  # the rest of this pass over the buckets, then the start of the next
            cursor, keys = self.store.scan(self._scan_cursor, "*", 64)
            self._scan_cursor = cursor
            for key in keys:
                if recency is None or key not in recency:
                    self.store.delete(key)
                    self.evicted_keys += 1
                    return True
            if cursor == 0 and not keys and len(self.store) == 0:
                return False
        return False

    def _entry_bytes(self, key: Any, value: Any) -> int:
        if isinstance(key, str) and isinstance(value, str):
            return sys.getsizeof(key) + sys.getsizeof(value) + self._key_extra_bytes
        return 0  # the operation itself refuses a non-string

    # -- recency (allkeys-lru only) -----------------------------------------

    def touch(self, key: str) -> None:
        recency = self._recency
        assert recency is not None
        try:
            recency.move_to_end(key)
        except KeyError:
            recency[key] = None
            if len(recency) > 2 * len(self.store) + 1024:
                self._compact()

    def forget(self, key: str) -> None:
        if self._recency is not None:
            self._recency.pop(key, None)

    def _compact(self) -> None:
        """Drop recency entries of keys that expired or were deleted meanwhile."""
        get = self.store.get
        assert self._recency is not None
        self._recency = OrderedDict((key, None) for key in self._recency if get(key) is not None)

    # -- wiring ----------------------------------------------------------------

    def install(self, handler: Handler) -> None:
        """Wrap the handler's operations: writes check room first; LRU records use."""
        handler.stats_sections["memory"] = self.stats
        pin_malloc_thresholds()
        estimates: dict[str, Callable[[list[Any]], int]] = {
            "set": lambda args: self._entry_bytes(args[0], args[1]),
            "cas": lambda args: self._entry_bytes(args[0], args[2]),
            "incr": lambda args: INCR_BYTES + self._key_extra_bytes,
            "mset": lambda args: sum(self._entry_bytes(k, v) for k, v in args[0].items())
            if isinstance(args[0], dict) else 0,
        }
        for op, estimate in estimates.items():
            handler.wrap_op(op, self._guard_write(estimate))
        if self._recency is None:
            return
        found = self._tracking(lambda args, result: () if result is None or result is False or result == -2
                               else (args[0],))  # get, ttl, exists: only keys that exist
        for op in ("get", "exists", "ttl", "cas", "set", "incr"):
            handler.wrap_op(op, found)
        handler.wrap_op("mget", self._tracking(
            lambda args, values: [key for key, value in zip(args[0], values) if value is not None]))
        handler.wrap_op("mset", self._tracking(lambda args, result: args[0]))
        handler.wrap_op("del", self._track_delete)

    def _guard_write(self, estimate: Callable[[list[Any]], int]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(op: Callable[[list[Any], dict[str, Any]], Any]) -> Callable[[list[Any], dict[str, Any]], Any]:
            def guarded(args: list[Any], options: dict[str, Any]) -> Any:
                self.make_room(estimate(args))
                return op(args, options)
            return guarded
        return wrap

    def _tracking(self, touched: Callable[[list[Any], Any], Iterable[str]]) -> Callable[
            [Callable[[list[Any], dict[str, Any]], Any]], Callable[[list[Any], dict[str, Any]], Any]]:
        """A wrapper that marks ``touched(args, result)`` as just used."""
        def wrap(op: Callable[[list[Any], dict[str, Any]], Any]) -> Callable[[list[Any], dict[str, Any]], Any]:
            def tracked(args: list[Any], options: dict[str, Any]) -> Any:
                result = op(args, options)
                for key in touched(args, result):
                    self.touch(key)
                return result
            return tracked
        return wrap

    def _track_delete(self, op: Callable[[list[Any], dict[str, Any]], Any]) -> Callable[[list[Any], dict[str, Any]], Any]:
        def tracked(args: list[Any], options: dict[str, Any]) -> Any:
            result = op(args, options)
            if isinstance(args[0], str):
                self.forget(args[0])
            return result
        return tracked

    def stats(self) -> dict[str, Any]:
        """The ``memory`` section of ``stats``."""
        return {
            "max_memory_bytes": self.max_memory_bytes,
            "used_bytes": self.used_bytes,
            "baseline_bytes": self.baseline_bytes,
            "eviction": self.policy,
            "evicted_keys": self.evicted_keys,
            "refused_writes": self.refused_writes,
            "refused_replies": self.refused_replies,
        }


def cap_memory(handler: Handler, max_memory_bytes: int, policy: str,
               output: OutputQueue | None = None) -> MemoryGuard | None:
    """Install a :class:`MemoryGuard` on ``handler`` when a limit is set (0: none).

    Call after the table is loaded: what it holds then is data, the rest of
    the process's memory is the baseline. ``output``, the server's queued
    replies, then counts against the limit too.

    Raises:
        ValueError: the limit is below what the server uses with an empty table.
    """
    if not max_memory_bytes:
        return None
    guard = MemoryGuard(handler.store, max_memory_bytes, policy)
    if guard.baseline_bytes >= max_memory_bytes:
        raise ValueError(f"--max-memory {max_memory_bytes} is below what the server needs empty "
                         f"({guard.baseline_bytes} bytes)")
    guard.install(handler)
    if output is not None:
        guard.count_output(handler, output)
    log.info("memory limit %d bytes, eviction %s", max_memory_bytes, policy)
    return guard
