"""Turns one request frame into one reply frame. No sockets here.

:class:`Handler` validates everything before it touches the store, so a bad
request gets an error reply and changes nothing, and any unexpected exception
becomes an ``INTERNAL`` error reply rather than a dead server.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import time
from collections import Counter, OrderedDict
from typing import Any, Callable, Iterable, Iterator

import msgpack

from common import __version__
from common.limits import KEYS_SLICE_S, SMALL_REPLY_BYTES, Limits
from common.limits import utf8_over as _utf8_over
from common.ops import OPS, WRITE_OPS
from common.protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    Status,
    check_request,
    encode_reply,
    ok,
    renew_packer,
    unpack_request,
)
from server.glob_match import PatternTooComplex
from server.store import SCAN_POSITIONS, NotAnInteger, Store

log = logging.getLogger(__name__)

#: How many write replies are remembered by request id, so that a client's
#: retry of a write that did arrive is answered instead of applied twice.
#: With a data dir they are journaled with their write and survive a restart.
RECENT_REPLIES = 10_000

#: A success reply's first bytes: a 2-array, status 0 (the payload follows).
_BATCH_OK = b"\x92\x00"

_array_header = msgpack.Packer().pack_array_header

#: The options of a plain write from the client library.
_RID_ONLY = frozenset({"rid"})

#: Longest accepted request id.
MAX_RID_CHARS = 128

#: Longest TTL accepted: about 100 years.
MAX_TTL_S = 100 * 365 * 24 * 3600.0

#: Values of at most this many characters make replies below
#: SMALL_REPLY_BYTES whatever their UTF-8: they are never checked against
#: the reply limits (ZeroMQ's high-water mark bounds them).
_UNCHECKED_CHARS = SMALL_REPLY_BYTES // 4 - 16

#: The reply of a ``batch`` element left out because the batch's replies
#: reached the reply limit: the element was not run.
_NOT_RUN = encode_reply(Status.TOO_LARGE, "not run: the batch's replies reached the reply limit")

#: A ``batch`` reply's bytes besides its elements' replies (status, array header).
_BATCH_HEADER_BYTES = 8

#: After building a reply larger than this, the shared msgpack Packer is
#: replaced (see :func:`common.protocol.renew_packer`).
PACKER_KEEP_BYTES = 256 * 1024


class _Refused(Exception):
    """Raised inside an op to answer with an error status."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


#: Raised by an operation, or by a wrapper installed with
#: :meth:`Handler.wrap_op`, to answer with an error status.
Refused = _Refused


class Handler:
    """Executes requests against a :class:`Store`.

    Args:
        store: the table.
        limits: the limits to enforce.
        clock: wall-clock seconds, for uptime (tests may fake it).
    """

    def __init__(self, store: Store, limits: Limits = Limits(), clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.limits = limits
        self._clock = clock
        self._started = clock()
        # The decoder's bound on any one string: the largest thing a request
        # may legitimately carry. The per-field limits are checked afterwards.
        self._max_str_bytes = max(
            limits.max_value_bytes, limits.max_key_bytes, limits.max_pattern_bytes, MAX_RID_CHARS * 4
        )
        self._recent: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        #: Replies remembered so far (see :meth:`rids_remembered_since`).
        self.remembered_count = 0
        # Cursors carry a tag of this run, so one from another run is refused
        # instead of silently resuming at the wrong place; tag and scan
        # position fit in 32 bits.
        self._scan_tag = random.randrange(1, 2**32 // SCAN_POSITIONS)
        self.op_counts: Counter[str] = Counter()
        self.error_counts: Counter[str] = Counter()
        self._ops: dict[str, Callable[[list[Any], dict[str, Any]], Any]] = {
            op: getattr(self, "_op_" + op) for op in OPS
        }
        self._plain_get = True  # see wrap_op
        #: Extra sections for ``stats`` (persistence, memory policy...), each a
        #: callable returning a dict, keyed by section name.
        self.stats_sections: dict[str, Callable[[], dict[str, Any]]] = {}
        #: Largest reply built: ``limits.max_reply_bytes``, or less under a
        #: memory cap (see :meth:`cap_replies`).
        self.max_reply_bytes = limits.max_reply_bytes
        self._make_reply_room: Callable[[int], None] | None = None
        # The reply limit for the request being answered, and within a batch
        # the bytes of its replies so far (its elements share the limit).
        self._reply_limit = self.max_reply_bytes
        self._batch_bytes = 0
        # True when a reply over PACKER_KEEP_BYTES was admitted and not built yet.
        self._renew_packer = False
        # Whether a lone get must be checked: only if a value can make a
        # reply over the limit (or under a memory cap); in a batch, always.
        self._check_gets = self.max_reply_bytes < limits.max_value_bytes + 16
        # The perf_counter time a batch's keys pages must stop scanning at;
        # 0.0 in a batch before its first keys page, None outside batches.
        self._scan_deadline: float | None = None

    def wrap_op(self, op: str, wrapper: Callable[[Callable[[list[Any], dict[str, Any]], Any]],
                                                  Callable[[list[Any], dict[str, Any]], Any]]) -> None:
        """Replace ``op``'s implementation by ``wrapper(current)`` (the memory cap uses it).

        A wrapped ``get`` turns off the fast path for ``["get", key]``, which
        does not go through the operations table.
        """
        self._ops[op] = wrapper(self._ops[op])
        if op == "get":
            self._plain_get = False

    def cap_replies(self, max_reply_bytes: int, make_room: Callable[[int], None]) -> None:
        """Under a memory cap (server/memory.py): build no reply over
        ``max_reply_bytes``, and none before ``make_room(bytes)`` made room for
        it (it raises :data:`Refused` if it cannot)."""
        self.max_reply_bytes = self._reply_limit = max(SMALL_REPLY_BYTES, min(self.max_reply_bytes, max_reply_bytes))
        self._make_reply_room = make_room
        self._check_gets = True

    def handle(self, frame: bytes) -> bytes:
        """Answer one request frame; never raises."""
        try:
            request = unpack_request(frame, self._max_str_bytes, self.limits.max_batch_keys)
        except ProtocolError as exc:
            return self._error(exc.status, str(exc))
        except Exception:
            log.exception("internal error decoding a request")
            return self._error(Status.INTERNAL, "internal error decoding the request; see the server log")
        return self._answer(request, in_batch=False)

    def _answer(self, request: Any, in_batch: bool) -> bytes:
        """Answer one decoded request (alone, or one item of a ``batch``)."""
        try:
            # Fast paths for the commonest requests, measured to matter:
            # ["get", key] is answered here (the same checks and answer as
            # below, a third of the work; anything added below for every
            # request must be added here too); ["set", key, value, {"rid"}]
            # skips check_request, whose checks it passes by its shape.
            if type(request) is list and len(request) == 2 and request[0] == "get" and self._plain_get:
                key = request[1]
                if type(key) is str and len(key) * 4 <= self.limits.max_key_bytes:
                    self.op_counts["get"] += 1
                    value = self.store.get(key)
                    if (in_batch or self._check_gets) and value is not None and len(value) > _UNCHECKED_CHARS:
                        return self._large_get(value)
                    return ok(value)
            if (type(request) is list and len(request) == 4 and request[0] == "set"
                    and type(request[3]) is dict and request[3].keys() == _RID_ONLY):
                op, args, options = "set", request[1:3], request[3]
            else:
                op, args, options = check_request(request)
        except ProtocolError as exc:
            return self._error(exc.status, str(exc))
        except Exception:
            log.exception("internal error decoding a request")
            return self._error(Status.INTERNAL, "internal error decoding the request; see the server log")
        self.op_counts[op] += 1
        if op == "batch":
            if in_batch:
                return self._error(Status.BAD_REQUEST, "a batch cannot contain a batch")
            return self._answer_batch(args[0])
        rid = options.get("rid") if op in WRITE_OPS else None
        if rid is not None:
            if not isinstance(rid, str) or len(rid) > MAX_RID_CHARS:
                return self._error(Status.BAD_REQUEST, f"rid must be a string of at most {MAX_RID_CHARS} characters")
            rid = (op, rid)
            cached = self._recent.get(rid)
            if cached is not None:
                return cached
        try:
            reply = ok(self._ops[op](args, options))
            if self._renew_packer:
                self._renew_packer = False
                renew_packer()
        except _Refused as exc:
            return self._error(exc.status, str(exc))
        except NotAnInteger as exc:
            return self._error(Status.NOT_INTEGER, str(exc))
        except Exception:
            log.exception("internal error answering %s", op)
            return self._error(Status.INTERNAL, f"internal error answering {op}; see the server log")
        if rid is not None:  # only applied writes: a refused one may be retried
            self._recent[rid] = reply
            self.remembered_count += 1
            if len(self._recent) > RECENT_REPLIES:
                self._recent.popitem(last=False)
        return reply

    def _answer_batch(self, items: Any) -> bytes:
        """``[0, [reply, ...]]``: each item answered as if it came alone, in order.

        The item replies are already msgpack, so the batch reply is their
        concatenation behind an array header, not a re-encoding. They share
        the reply limit: once they have used it up, the remaining items are
        not run and each gets :data:`_NOT_RUN` (room for those is kept from
        the start, so the whole reply stays within the limit).
        """
        if not isinstance(items, list):
            return self._error(Status.BAD_REQUEST, "batch takes an array of requests")
        if len(items) > self.limits.max_batch_keys:
            return self._error(Status.TOO_LARGE, f"more than {self.limits.max_batch_keys} requests in one batch")
        limit = self._reply_limit - _BATCH_HEADER_BYTES - len(items) * len(_NOT_RUN)
        if limit < SMALL_REPLY_BYTES:
            return self._error(Status.TOO_LARGE, f"a batch of {len(items)} requests could need a reply over "
                               f"the reply limit of {self._reply_limit} bytes")
        answer = self._answer
        replies: list[bytes] = []
        append = replies.append
        full = limit - SMALL_REPLY_BYTES  # past it, not even a small reply is sure to fit
        used = 0
        self._reply_limit, self._scan_deadline = limit, 0.0
        try:
            for item in items:
                if used > full:
                    append(_NOT_RUN)
                    continue
                self._batch_bytes = used
                reply = answer(item, True)
                used += len(reply)
                append(reply)
        finally:
            self._reply_limit, self._batch_bytes, self._scan_deadline = self.max_reply_bytes, 0, None
        return _BATCH_OK + _array_header(len(replies)) + b"".join(replies)

    def _admit_reply(self, size: int) -> None:
        """Refuse to build a reply of ``size`` bytes that the limits have no room for.

        Called before a reply that may be large is built. Building it takes
        twice its size for a moment (msgpack's buffer, then the reply), and
        a batch's earlier replies are still held (and are copied once more
        at its end), so under a memory cap room is made for twice both, by
        evicting keys as a write would.

        Raises:
            Refused: ``TOO_LARGE`` over the reply limit; ``OUT_OF_MEMORY``
                when the memory cap leaves no room for it now.
        """
        if size + self._batch_bytes > self._reply_limit:
            within = " with the batch's replies before it" if self._batch_bytes else ""
            raise _Refused(Status.TOO_LARGE, f"reply of {size} bytes{within} would be over the reply limit "
                           f"of {self.max_reply_bytes} bytes")
        if self._make_reply_room is not None:
            self._make_reply_room(2 * (size + self._batch_bytes))
        self._renew_packer = size > PACKER_KEEP_BYTES

    def _large_get(self, value: str) -> bytes:
        """The reply to a ``get`` of a value too large to answer unchecked."""
        try:
            self._admit_reply(_text_bytes(value) + 8)
        except _Refused as exc:
            return self._error(exc.status, str(exc))
        reply = ok(value)
        if self._renew_packer:
            self._renew_packer = False
            renew_packer()
        return reply

    def replies_remembered_since(self, count: int) -> list[tuple[tuple[str, str], bytes]]:
        """The ``((op, rid), reply)`` pairs remembered since ``remembered_count``
        was ``count``, oldest first: persistence journals them with their
        batch, or forgets them if the batch is undone (one ``batch`` request
        can remember many)."""
        new = min(self.remembered_count - count, len(self._recent))
        return list(itertools.islice(reversed(self._recent.items()), new))[::-1]

    def remembered_replies(self) -> Iterator[tuple[tuple[str, str], bytes]]:
        """Every remembered ``((op, rid), reply)``, oldest first, for a snapshot.

        Only the keys are copied now (a copy of 10,000 pairs would cost a
        compaction's start about 1 ms more); each reply is looked up as the
        iterator reaches it, and one forgotten or evicted by then is skipped
        (an evicted one would not survive a restart either: newer ones
        replace it).
        """
        keys, recent = list(self._recent), self._recent
        return ((key, reply) for key in keys if (reply := recent.get(key)) is not None)

    def restore_replies(self, replies: Iterable[tuple[tuple[str, str], bytes]]) -> None:
        """Remember replies recovered from a data dir, given oldest first; the newest
        RECENT_REPLIES are kept, so a retry after a restart is answered, not applied."""
        recent = self._recent
        for key, reply in replies:
            recent.pop(key, None)
            recent[key] = reply
        while len(recent) > RECENT_REPLIES:
            recent.popitem(last=False)

    def forget_reply(self, key: tuple[str, str]) -> None:
        """Forget the reply of ``(op, rid)``: its write was undone, so a retry must run again."""
        self._recent.pop(key, None)

    def _error(self, status: Status, message: str) -> bytes:
        self.error_counts[status.name] += 1
        log.debug("refused a request: %s %s", status.name, message)
        return encode_reply(status, message)

    # -- argument checks ---------------------------------------------------

    def _key(self, key: Any) -> str:
        if not isinstance(key, str):
            raise _Refused(Status.BAD_REQUEST, f"a key must be a string, not {type(key).__name__}")
        if _utf8_over(key, self.limits.max_key_bytes):
            raise _Refused(Status.TOO_LARGE, f"key longer than {self.limits.max_key_bytes} bytes")
        return key

    def _value(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _Refused(Status.BAD_REQUEST, f"a value must be a string, not {type(value).__name__}")
        if _utf8_over(value, self.limits.max_value_bytes):
            raise _Refused(Status.TOO_LARGE, f"value longer than {self.limits.max_value_bytes} bytes")
        return value

    def _batch(self, items: Any, kind: type) -> Any:
        if not isinstance(items, kind):
            raise _Refused(Status.BAD_REQUEST, f"expected a {'map' if kind is dict else 'array'}")
        if len(items) > self.limits.max_batch_keys:
            raise _Refused(Status.TOO_LARGE, f"more than {self.limits.max_batch_keys} keys in one request")
        return items

    @staticmethod
    def _ttl(options: dict[str, Any]) -> float | None:
        ttl = options.get("ttl_s")
        if ttl is None:
            return None
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
            raise _Refused(Status.BAD_REQUEST, "ttl_s must be a number of seconds")
        if not 0 < ttl <= MAX_TTL_S:
            raise _Refused(Status.BAD_REQUEST, f"ttl_s must be above 0 and at most {MAX_TTL_S:.0f}")
        return float(ttl)

    @staticmethod
    def _flag(options: dict[str, Any], name: str) -> bool:
        value = options.get(name)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise _Refused(Status.BAD_REQUEST, f"option {name} must be true or false")
        return value

    # -- operations ----------------------------------------------------------

    def _op_batch(self, args: list[Any], options: dict[str, Any]) -> Any:
        raise AssertionError("handled by _answer_batch")  # pragma: no cover

    def _op_ping(self, args: list[Any], options: dict[str, Any]) -> str:
        return "PONG"

    def _op_get(self, args: list[Any], options: dict[str, Any]) -> str | None:
        value = self.store.get(self._key(args[0]))
        if value is not None and len(value) > _UNCHECKED_CHARS:
            self._admit_reply(_text_bytes(value) + 8)
        return value

    def _op_set(self, args: list[Any], options: dict[str, Any]) -> bool:
        key, value = self._key(args[0]), self._value(args[1])
        if options.keys() <= _RID_ONLY:  # a plain set, the common case
            return self.store.set(key, value)
        ttl_s = self._ttl(options)
        nx, xx = self._flag(options, "nx"), self._flag(options, "xx")
        if nx and xx:
            raise _Refused(Status.BAD_REQUEST, "nx and xx exclude each other")
        return self.store.set(key, value, ttl_s, nx=nx, xx=xx)

    def _op_del(self, args: list[Any], options: dict[str, Any]) -> bool:
        return self.store.delete(self._key(args[0]))

    def _op_exists(self, args: list[Any], options: dict[str, Any]) -> bool:
        return self.store.exists(self._key(args[0]))

    def _op_mget(self, args: list[Any], options: dict[str, Any]) -> list[str | None]:
        keys = [self._key(key) for key in self._batch(args[0], list)]
        get = self.store.get
        values = [get(key) for key in keys]
        size = 6 * len(values) + sum(map(len, filter(None, values)))  # 5 for each str header, 1 for each nil
        if size > _UNCHECKED_CHARS:
            self._admit_reply(size + sum(_text_bytes(v) - len(v) for v in filter(None, values) if not v.isascii()))
        return values

    def _op_mset(self, args: list[Any], options: dict[str, Any]) -> bool:
        pairs = self._batch(args[0], dict)
        max_key, max_value = self.limits.max_key_bytes // 4, self.limits.max_value_bytes // 4
        for key, value in pairs.items():  # check all before changing anything
            if type(key) is str and type(value) is str and len(key) <= max_key and len(value) <= max_value:
                continue  # short strings: within the limits whatever their UTF-8 (the common case, fast)
            self._key(key)
            self._value(value)
        self.store.set_many(pairs, self._ttl(options))
        return True

    def _op_keys(self, args: list[Any], options: dict[str, Any]) -> list[Any]:
        """One page of a scan, which stops after :data:`KEYS_SLICE_S` of scanning.

        In a ``batch`` the slice is shared: it starts at the first ``keys``
        element, and an element that comes after it has run out is answered
        with its own cursor and no keys (a cursor 0 becomes this run's cursor
        for the start), so a batch of scans cannot hold up the server either.
        """
        pattern, cursor, count = args
        if not isinstance(pattern, str):
            raise _Refused(Status.BAD_REQUEST, "the pattern must be a string")
        if _utf8_over(pattern, self.limits.max_pattern_bytes):
            raise _Refused(Status.TOO_LARGE, f"pattern longer than {self.limits.max_pattern_bytes} bytes")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise _Refused(Status.BAD_REQUEST, "count must be a positive integer")
        if isinstance(cursor, bool) or not isinstance(cursor, int):
            raise _Refused(Status.BAD_REQUEST, "cursor must be an integer")
        position = 0
        if cursor != 0:
            tag, position = divmod(cursor, SCAN_POSITIONS)
            if tag != self._scan_tag:
                raise _Refused(Status.BAD_CURSOR, "unknown cursor (from another server run?); start again at 0")
        now = time.perf_counter()
        deadline = self._scan_deadline
        if deadline is None:
            deadline = now + KEYS_SLICE_S
        elif not deadline:
            deadline = self._scan_deadline = now + KEYS_SLICE_S
        elif now >= deadline:
            return [self._scan_tag * SCAN_POSITIONS + position, []]
        room = self._reply_limit - self._batch_bytes
        try:
            next_position, keys = self.store.scan(position, pattern, min(count, self.limits.max_scan_count),
                                                  deadline, room // 2)
        except PatternTooComplex as exc:
            raise _Refused(Status.TOO_LARGE, str(exc)) from None
        size = 16 + 5 * len(keys) + sum(map(len, keys))
        if size > _UNCHECKED_CHARS:
            self._admit_reply(size + sum(_text_bytes(key) - len(key) for key in keys if not key.isascii()))
        return [next_position and self._scan_tag * SCAN_POSITIONS + next_position, keys]

    def _op_ttl(self, args: list[Any], options: dict[str, Any]) -> float:
        return self.store.ttl(self._key(args[0]))

    def _op_incr(self, args: list[Any], options: dict[str, Any]) -> int:
        key, delta = self._key(args[0]), args[1]
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise _Refused(Status.BAD_REQUEST, "delta must be an integer")
        return self.store.incr(key, delta)

    def _op_cas(self, args: list[Any], options: dict[str, Any]) -> bool:
        key, expected, value = self._key(args[0]), self._value(args[1]), self._value(args[2])
        return self.store.cas(key, expected, value, self._ttl(options))

    def _op_stats(self, args: list[Any], options: dict[str, Any]) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "uptime_s": round(self._clock() - self._started, 3),
            "keys": len(self.store),
            "keys_with_ttl": self.store.keys_with_ttl,
            "expired_keys": self.store.expired_total,
            "memory_bytes": self.store.memory_bytes,
            "rss_bytes": _rss_bytes(),
            "ops": dict(self.op_counts),
            "errors": dict(self.error_counts),
            "limits": vars(self.limits).copy(),
        }
        for name, section in self.stats_sections.items():
            stats[name] = section()
        return stats


def _text_bytes(text: str) -> int:
    """``text``'s UTF-8 bytes (encoded to count only if it is not ASCII)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _rss_bytes() -> int:
    """Resident memory of this process (Linux), or 0 where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
