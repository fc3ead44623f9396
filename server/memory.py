"""The memory cap: ``--max-memory`` and what happens when it is reached.

The limit counts the whole server, as its resident memory (RSS) will show:
what the process used before it held any data (measured at start, plus
:data:`RESERVE_BYTES` for the reply cache and socket buffers), the table's
own estimate (:attr:`server.store.Store.memory_bytes`, which measured at or
above the real growth of RSS for values of 1 byte to 100 KB) with its slack
(:attr:`~server.store.Store.slack_bytes`: what keys coming and going leave
that the estimate does not count; both fall when a key goes), and the
eviction policy's bookkeeping. After a write's arguments were checked and
before it is applied, :class:`MemoryGuard` checks that what it stores fits
(the row's ``stored`` parameters, :mod:`common.ops`); if it does not, the
eviction policy (server/eviction.py) evicts, or the write is refused with
``OUT_OF_MEMORY``.

Replies the server holds for clients count too (server/output.py). Of the
headroom (the limit minus what the empty server uses) writes leave an eighth
free, so that a full table can still be read: the largest reply is half of
that (building a reply takes twice its size for a moment), and so is what one
peer may have queued; all peers together may have a quarter of the headroom
queued. Before a large reply is built, room is made for twice its size as
for a write (evicting under an evicting policy); if there is none it is
refused (``OUT_OF_MEMORY``).

Nothing here runs unless ``--max-memory`` is set: only then does the handler
get the guard's hooks (:class:`server.handler.MemoryHooks`).
"""

from __future__ import annotations

import ctypes
import logging
import re
from collections.abc import Callable
from typing import Any

from common.limits import SMALL_REPLY_BYTES
from common.ops import Kind, Op, Param
from common.protocol import Status
from server.eviction import EvictionPolicy, NoEviction
from server.handler import ArgsHook, Refused, rss_bytes
from server.output import OutputQueue
from server.store import Store

log = logging.getLogger(__name__)

#: Bytes kept free beyond the start-up footprint for what grows with use but
#: not with the data: the 10,000 remembered write replies, socket buffers.
RESERVE_BYTES = 4 * 1024 * 1024

#: What a stored INT argument (``incr``'s) may make the value take: a number of 20 digits.
LONGEST_NUMBER = "-" + "9" * 19

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
    multiplier: int = (1024 if binary else 1000) ** ("kmgt".index(unit) + 1)
    return number * multiplier


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

    Gives the handler its :class:`~server.handler.MemoryHooks`: room made
    before each write that stores something, the policy's note of the keys
    used after each op, room made before each large reply.

    Args:
        store: the table.
        max_memory_bytes: the limit for the whole process.
        policy: the eviction policy's class (server/eviction.py).
        output: the server's queued replies: counted against the limit,
            their budgets (and the largest reply) fitted under it.
        baseline_bytes: what the process uses besides the table; measured
            from RSS now when omitted.

    Raises:
        ValueError: the limit is at or below the baseline.
    """

    def __init__(self, store: Store, max_memory_bytes: int, policy: type[EvictionPolicy] = NoEviction,
                 output: OutputQueue | None = None, baseline_bytes: int | None = None) -> None:
        self.store = store
        self.max_memory_bytes = max_memory_bytes
        self.policy = policy(store)
        if baseline_bytes is None:
            baseline_bytes = max(0, rss_bytes() - store.memory_bytes) + RESERVE_BYTES
        if baseline_bytes >= max_memory_bytes:
            raise ValueError(f"--max-memory {max_memory_bytes} is below what the server needs empty "
                             f"({baseline_bytes} bytes)")
        self.baseline_bytes = baseline_bytes
        self.evicted_keys = 0
        self.refused_writes = 0
        self.refused_replies = 0
        #: What a new key costs besides its strings, as :attr:`used_bytes` counts it.
        self._key_extra_bytes = store.key_slack_bytes + self.policy.entry_bytes
        self._output = output
        #: Bytes writes leave free for replies; the largest reply built (None: replies are not capped).
        self.reply_reserve_bytes = 0
        self.max_reply_bytes: int | None = None
        if output is not None:
            output.tracked_bytes = SMALL_REPLY_BYTES  # under a cap, every reply that may be large counts
            headroom = max_memory_bytes - baseline_bytes
            self.reply_reserve_bytes = headroom // REPLY_SHARE
            output.max_total_bytes = min(output.max_total_bytes, headroom // OUTPUT_SHARE)
            output.max_peer_bytes = min(output.max_peer_bytes, self.reply_reserve_bytes // 2)
            self.max_reply_bytes = output.max_peer_bytes

    # -- accounting --------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """The process's estimated memory use, as the limit counts it."""
        output = self._output.held_bytes if self._output is not None else 0
        return (self.baseline_bytes + self.store.memory_bytes + self.store.slack_bytes
                + self.policy.bookkeeping_bytes + output)

    def make_room(self, incoming_bytes: int) -> None:
        """Evict until ``incoming_bytes`` more fit under the limit, with the reply reserve free.

        Raises:
            Refused: ``OUT_OF_MEMORY`` when the policy forbids evicting, or
                nothing is left to evict.
        """
        if not self._room_for(incoming_bytes + self.reply_reserve_bytes):
            self.refused_writes += 1
            raise Refused(Status.OUT_OF_MEMORY, f"out of memory: the server is at its limit of "
                                                f"{self.max_memory_bytes} bytes (eviction policy {self.policy.name})")

    def make_reply_room(self, reply_bytes: int) -> None:
        """Evict, as for a write, until building a reply of ``reply_bytes`` fits.

        Raises:
            Refused: ``OUT_OF_MEMORY``, as :meth:`make_room`.
        """
        if not self._room_for(reply_bytes):
            self.refused_replies += 1
            raise Refused(Status.OUT_OF_MEMORY, f"out of memory: no room for a reply of {reply_bytes // 2} "
                                                f"bytes under the limit of {self.max_memory_bytes} bytes "
                                                f"(eviction policy {self.policy.name})")

    def _room_for(self, incoming_bytes: int) -> bool:
        """Evict until ``incoming_bytes`` more fit; False if they cannot."""
        # What could not fit even in an empty table must not empty it first.
        fits_at_all = self.baseline_bytes + incoming_bytes <= self.max_memory_bytes
        while self.used_bytes + incoming_bytes > self.max_memory_bytes:
            if not fits_at_all or not self.policy.evict_one():
                return False
            self.evicted_keys += 1
        return True

    # -- the handler's hooks, from each op's row ------------------------------------

    def before(self, op: Op) -> ArgsHook | None:
        """For a write that stores something: make room for what its ``stored`` arguments will take.

        A write that stores nothing (``del``) is never refused.
        """
        if not op.writes:
            return None
        sizes = tuple((index, self._size_of(op, param)) for index, param in enumerate(op.params) if param.stored)
        if not sizes:
            return None
        make_room = self.make_room

        def room_for_write(args: list[Any]) -> None:
            make_room(sum(size(args[index]) for index, size in sizes))

        return room_for_write

    def _size_of(self, op: Op, param: Param) -> Callable[[Any], int]:
        """What a checked ``stored`` argument of ``param``'s kind will take in the table."""
        key_bytes, value_bytes, key_extra = self.store.new_key_bytes, self.store.value_bytes, self._key_extra_bytes
        if param.kind is Kind.KEY:
            return lambda key: key_bytes(key) + key_extra
        if param.kind is Kind.VALUE:
            return value_bytes
        if param.kind is Kind.INT:
            number_bytes = value_bytes(LONGEST_NUMBER)
            return lambda number: number_bytes
        if param.kind is Kind.PAIRS:
            return lambda pairs: sum(key_bytes(key) + value_bytes(value) + key_extra for key, value in pairs.items())
        if param.kind is Kind.RECORDS:  # a tombstone counts as much as an empty value would
            return lambda records: sum(key_bytes(key) + value_bytes(value or "") + key_extra
                                       for key, value, _, _ in records)
        raise ValueError(f"{op.name}: the memory guard cannot count a stored {param.kind.value} argument")

    def after(self, op: Op) -> ArgsHook | None:
        """The eviction policy's note of the keys ``op`` used (allkeys-lru only)."""
        return self.policy.used(op)

    def stats(self) -> dict[str, Any]:
        """The ``memory`` section of ``stats``."""
        return {
            "max_memory_bytes": self.max_memory_bytes,
            "used_bytes": self.used_bytes,
            "baseline_bytes": self.baseline_bytes,
            "eviction": self.policy.name,
            "evicted_keys": self.evicted_keys,
            "refused_writes": self.refused_writes,
            "refused_replies": self.refused_replies,
        }


def cap_memory(store: Store, max_memory_bytes: int, policy: type[EvictionPolicy],
               output: OutputQueue) -> MemoryGuard | None:
    """A :class:`MemoryGuard` over ``store`` when a limit is set (0: none), counting ``output``.

    Call after the table is loaded: what it holds then is data, the rest of
    the process's memory is the baseline. Pins glibc's mmap threshold.

    Raises:
        ValueError: the limit is below what the server uses with an empty table.
    """
    if not max_memory_bytes:
        return None
    guard = MemoryGuard(store, max_memory_bytes, policy, output)
    pin_malloc_thresholds()
    log.info("memory limit %d bytes, eviction %s", max_memory_bytes, policy.name)
    return guard
