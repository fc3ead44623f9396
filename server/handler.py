"""Turns one request frame into one reply frame. No sockets here.

:class:`Handler` validates everything before it touches the store, so a bad
request gets an error reply and changes nothing, and any unexpected exception
becomes an ``INTERNAL`` error reply rather than a dead server.

Every operation is driven by its row in :mod:`common.ops`: each argument is
checked by its :class:`~common.ops.Kind` and each option by its kind (in the
order of docs/PROTOCOL.md section 4.4), then the op's ``op_<name>`` method
runs with the checked values and calls one store method. A memory cap
(server/memory.py) takes part through the :class:`MemoryHooks` it is given at
construction: it may refuse a write before it runs, and notes which keys an
op used after it ran.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import msgpack

from common import __version__
from common.limits import KEYS_SLICE_S, MAX_NODE_NAME_BYTES, MAX_VERSION_AHEAD_S, SMALL_REPLY_BYTES, Limits
from common.limits import text_bytes as _text_bytes
from common.limits import utf8_over as _utf8_over
from common.membership import Entry, parse_entries
from common.ops import OPS, OPS_TABLE, REC_OPTION, Kind, Op, Option
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
from common.versions import Record, as_version
from server.glob_match import PatternTooComplex
from server.membership import MemberView, now_ms
from server.replies import RememberedReplies
from server.store import SCAN_POSITIONS, NotAnInteger, Store

log = logging.getLogger(__name__)

#: A success reply's first bytes: a 2-array, status 0 (the payload follows).
_BATCH_OK = b"\x92\x00"

_array_header: Callable[[int], bytes] = msgpack.Packer().pack_array_header

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
NOT_RUN = encode_reply(Status.TOO_LARGE, "not run: the batch's replies reached the reply limit")

#: A ``batch`` reply's bytes besides its elements' replies (status, array header).
_BATCH_HEADER_BYTES = 8

#: After building a reply larger than this, the shared msgpack Packer is
#: replaced (see :func:`common.protocol.renew_packer`).
PACKER_KEEP_BYTES = 256 * 1024


class Refused(Exception):
    """Raised by an argument check, an operation or a memory hook to answer with an error status."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


#: Called with an op's checked arguments (positional, in the row's order).
ArgsHook = Callable[[list[Any]], None]

#: An argument check: (the value, the parameter's name) -> the checked value; raises Refused.
_Check = Callable[[Any, str], Any]

#: An op called with its arguments (checked in place), without or with its options map.
_Call = Callable[[list[Any]], Any]
_CallWithOptions = Callable[[list[Any], dict[str, Any]], Any]


class MemoryHooks(Protocol):
    """What a memory cap (server/memory.py) does in the handler, asked for once per op at construction."""

    #: Largest reply the cap leaves room for; None: the cap does not limit replies.
    max_reply_bytes: int | None

    def before(self, op: Op) -> ArgsHook | None:
        """Runs before ``op`` with its checked arguments, after every check; raises Refused to refuse it."""

    def after(self, op: Op) -> ArgsHook | None:
        """Runs after ``op`` succeeded, with its checked arguments."""

    def make_reply_room(self, reply_bytes: int) -> None:
        """Makes room for building a reply (raises Refused if there is none)."""


class Handler:
    """Executes requests against a :class:`Store`.

    Args:
        store: the table.
        limits: the limits to enforce.
        replies: the write replies remembered by request id (persistence
            shares them); a new, empty set when omitted.
        memory: the memory cap's hooks, if there is a cap.
        sections: extra sections for ``stats`` (output budgets, persistence,
            memory, auth...), each a callable returning a dict, by name.
        clock: wall-clock seconds, for uptime (tests may fake it).
        members: this node's view of the membership; when omitted, a
            cluster of one named by the host name.
    """

    def __init__(
        self,
        store: Store,
        limits: Limits | None = None,
        replies: RememberedReplies | None = None,
        memory: MemoryHooks | None = None,
        sections: Mapping[str, Callable[[], dict[str, Any]]] | None = None,
        clock: Callable[[], float] = time.time,
        members: MemberView | None = None,
    ) -> None:
        self.store = store
        self.members = members if members is not None else MemberView.single(store.hlc.node)
        self.limits = limits = limits or Limits()
        self.replies = replies if replies is not None else RememberedReplies()
        self._clock = clock
        self._started = clock()
        # The decoder's bound on any one string: the largest thing a request
        # may legitimately carry. The per-field limits are checked afterwards.
        self._max_str_bytes = max(
            limits.max_value_bytes, limits.max_key_bytes, limits.max_pattern_bytes, MAX_RID_CHARS * 4
        )
        # Cursors carry a tag of this run, so one from another run is refused
        # instead of silently resuming at the wrong place; tag and scan
        # position fit in 32 bits.
        self._scan_tag = random.randrange(1, 2**32 // SCAN_POSITIONS)
        self.op_counts: Counter[str] = Counter()
        self.error_counts: Counter[str] = Counter()
        self._sections = dict(sections or {})
        #: Largest reply built: ``limits.max_reply_bytes``, or less under a memory cap.
        self.max_reply_bytes = limits.max_reply_bytes
        self._make_reply_room: Callable[[int], None] | None = None
        if memory is not None and memory.max_reply_bytes is not None:
            self.max_reply_bytes = max(SMALL_REPLY_BYTES, min(self.max_reply_bytes, memory.max_reply_bytes))
            self._make_reply_room = memory.make_reply_room
        # The reply limit for the request being answered, and within a batch
        # the bytes of its replies so far (its elements share the limit).
        self._reply_limit = self.max_reply_bytes
        self._batch_bytes = 0
        # True when a reply over PACKER_KEEP_BYTES was admitted and not built yet.
        self._renew_packer = False
        # Whether a lone get must be checked: only if a value can make a
        # reply over the limit (or under a memory cap); in a batch, always.
        self._check_gets = self.max_reply_bytes < limits.max_value_bytes + 16 or self._make_reply_room is not None
        # The perf_counter time a batch's keys pages must stop scanning at;
        # 0.0 in a batch before its first keys page, None outside batches.
        self._scan_deadline: float | None = None
        self._checks: dict[Kind, _Check] = {
            Kind.KEY: self._check_key, Kind.VALUE: self._check_value, Kind.KEYS: self._check_keys,
            Kind.PAIRS: self._check_pairs, Kind.INT: self._check_int, Kind.PATTERN: self._check_pattern,
            Kind.CURSOR: self._check_cursor, Kind.COUNT: self._check_count, Kind.REQUESTS: self._check_requests,
            Kind.ENTRIES: self._check_entries,
            Kind.RECORDS: self._check_records,
        }
        self._prepared = {op.name: self._prepare(op, memory) for op in OPS_TABLE}
        self._track_get = memory.after(OPS["get"]) if memory is not None else None

    def _prepare(self, op: Op, memory: MemoryHooks | None) -> tuple[bool, _Call, _CallWithOptions]:
        """What answering ``op`` takes, from its row: ``(writes, call, call_with_options)``.

        Both calls check the arguments by their kinds in place, in order, a
        cursor last (whether it is valid depends on this server run, the
        others only on the request), and ``call_with_options`` then the
        options; then the memory hook before, ``op_<name>``, the hook after.
        """
        params = sorted(enumerate(op.params), key=lambda item: item[1].kind is Kind.CURSOR)
        checks = tuple((index, self._checks[param.kind], param.name) for index, param in params)
        options = _OptionChecks(tuple((option.name, _OPTION_CHECKS[option.kind]) for option in op.options),
                                _exclusions(op.options))
        before = memory.before(op) if memory is not None else None
        after = memory.after(op) if memory is not None else None
        return (op.writes, *_callers(getattr(self, "op_" + op.name), checks, options, before, after))

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
            if type(request) is list and len(request) == 2 and request[0] == "get":
                key = request[1]
                if type(key) is str and len(key) * 4 <= self.limits.max_key_bytes:
                    self.op_counts["get"] += 1
                    value = self.store.get(key)
                    if (in_batch or self._check_gets) and value is not None and len(value) > _UNCHECKED_CHARS:
                        return self._large_get(value, request)
                    if self._track_get is not None:
                        self._track_get(request[1:])
                    return ok(value)
            if (type(request) is list and len(request) == 4 and request[0] == "set"
                    and type(request[3]) is dict and request[3].keys() == _RID_ONLY):
                op, args, options, plain = "set", request[1:3], request[3], True
            else:
                op, args, options = check_request(request)
                # Only v and rid? (check_request let no option through that the op does not have.)
                plain = not options or len(options) <= ("rid" in options) + ("v" in options)
        except ProtocolError as exc:
            return self._error(exc.status, str(exc))
        except Exception:
            log.exception("internal error decoding a request")
            return self._error(Status.INTERNAL, "internal error decoding the request; see the server log")
        self.op_counts[op] += 1
        if op == "batch":
            if in_batch:
                return self._error(Status.BAD_REQUEST, "a batch cannot contain a batch")
            try:
                requests = self._check_requests(args[0], "requests")
            except Refused as exc:
                return self._error(exc.status, str(exc))
            return self.op_batch(requests)
        writes, call, call_with_options = self._prepared[op]
        rid = options.get("rid") if writes else None
        if rid is not None:
            if not isinstance(rid, str) or len(rid) > MAX_RID_CHARS:
                return self._error(Status.BAD_REQUEST, f"rid must be a string of at most {MAX_RID_CHARS} characters")
            rid = (op, rid)
            cached = self.replies.get(rid)
            if cached is not None:
                return cached
        rec = options.get(REC_OPTION) if options and not plain else None
        try:
            if rec is not None:
                if type(rec) is not bool:
                    raise Refused(Status.BAD_REQUEST, f"option {REC_OPTION} must be true or false")
                if rec:
                    self._admit_records(op, args)
            result = call(args) if plain else call_with_options(args, options)
            reply = ok([result, self._records_after(op, args)] if rec else result)
            if self._renew_packer:
                self._renew_packer = False
                renew_packer()
        except Refused as exc:
            return self._error(exc.status, str(exc))
        except NotAnInteger as exc:
            return self._error(Status.NOT_INTEGER, str(exc))
        except Exception:
            log.exception("internal error answering %s", op)
            return self._error(Status.INTERNAL, f"internal error answering {op}; see the server log")
        if rid is not None:  # only applied writes: a refused one may be retried
            self.replies.remember(rid, reply)
        return reply

    def _admit_records(self, op: str, args: list[Any]) -> None:
        """Room for the records a write with ``rec`` answers with, made before the write runs.

        Afterwards a refusal would hide a write that was applied. The records
        hold the key's value after the write: the new one, or the one held
        when a condition failed; the larger of both is counted. The
        arguments are not checked yet: what is not a str counts nothing
        (the write is then refused by its check).
        """
        if op == "mset":
            pairs = args[0] if type(args[0]) is dict else {}
            size = sum(_text_bytes(k) + _text_bytes(v) + 32 for k, v in pairs.items()
                       if type(k) is str and type(v) is str)
        else:
            key = args[0]
            if type(key) is not str:
                return
            held = self.store.get(key) or ""
            new = args[-1] if op in ("set", "cas") and type(args[-1]) is str else ""
            size = _text_bytes(key) + max(_text_bytes(held), _text_bytes(new)) + 48
        if size > _UNCHECKED_CHARS:
            self._admit_reply(size)

    def _records_after(self, op: str, args: list[Any]) -> list[Record | None]:
        """The records a write left: one per pair for ``mset``, else the key's (nil: the node holds nothing)."""
        keys = args[0] if op == "mset" else (args[0],)
        record = self.store.record
        return [record(key) for key in keys]

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
            raise Refused(Status.TOO_LARGE, f"reply of {size} bytes{within} would be over the reply limit "
                          f"of {self.max_reply_bytes} bytes")
        if self._make_reply_room is not None:
            self._make_reply_room(2 * (size + self._batch_bytes))
        self._renew_packer = size > PACKER_KEEP_BYTES

    def _large_get(self, value: str, request: list[Any]) -> bytes:
        """The reply to a ``get`` of a value too large to answer unchecked."""
        try:
            self._admit_reply(_text_bytes(value) + 8)
        except Refused as exc:
            return self._error(exc.status, str(exc))
        if self._track_get is not None:
            self._track_get(request[1:])
        reply = ok(value)
        if self._renew_packer:
            self._renew_packer = False
            renew_packer()
        return reply

    def _error(self, status: Status, message: str) -> bytes:
        self.error_counts[status.name] += 1
        log.debug("refused a request: %s %s", status.name, message)
        return encode_reply(status, message)

    # -- argument checks, one per Kind: (value, the parameter's name) -> the checked value

    def _check_key(self, key: Any, name: str) -> str:
        if not isinstance(key, str):
            raise Refused(Status.BAD_REQUEST, f"a key must be a string, not {type(key).__name__}")
        if _utf8_over(key, self.limits.max_key_bytes):
            raise Refused(Status.TOO_LARGE, f"key longer than {self.limits.max_key_bytes} bytes")
        return key

    def _check_value(self, value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise Refused(Status.BAD_REQUEST, f"a value must be a string, not {type(value).__name__}")
        if _utf8_over(value, self.limits.max_value_bytes):
            raise Refused(Status.TOO_LARGE, f"value longer than {self.limits.max_value_bytes} bytes")
        return value

    def _check_keys(self, keys: Any, name: str) -> list[str]:
        if not isinstance(keys, list):
            raise Refused(Status.BAD_REQUEST, "expected an array")
        if len(keys) > self.limits.max_batch_keys:  # counted before any element is checked
            raise Refused(Status.TOO_LARGE, f"more than {self.limits.max_batch_keys} keys in one request")
        check = self._check_key
        return [check(key, name) for key in keys]

    def _check_pairs(self, pairs: Any, name: str) -> dict[str, str]:
        if not isinstance(pairs, dict):
            raise Refused(Status.BAD_REQUEST, "expected a map")
        if len(pairs) > self.limits.max_batch_keys:
            raise Refused(Status.TOO_LARGE, f"more than {self.limits.max_batch_keys} keys in one request")
        max_key, max_value = self.limits.max_key_bytes // 4, self.limits.max_value_bytes // 4
        for key, value in pairs.items():
            if type(key) is str and type(value) is str and len(key) <= max_key and len(value) <= max_value:
                continue  # short strings: within the limits whatever their UTF-8 (the common case, fast)
            self._check_key(key, name)
            self._check_value(value, name)
        return pairs

    @staticmethod
    def _check_int(number: Any, name: str) -> int:
        if isinstance(number, bool) or not isinstance(number, int):
            raise Refused(Status.BAD_REQUEST, f"{name} must be an integer")
        return number

    def _check_pattern(self, pattern: Any, name: str) -> str:
        if not isinstance(pattern, str):
            raise Refused(Status.BAD_REQUEST, f"the {name} must be a string")
        if _utf8_over(pattern, self.limits.max_pattern_bytes):
            raise Refused(Status.TOO_LARGE, f"{name} longer than {self.limits.max_pattern_bytes} bytes")
        return pattern

    def _check_cursor(self, cursor: Any, name: str) -> int:
        """A cursor's scan position: 0, or the position a cursor of this server run names."""
        if isinstance(cursor, bool) or not isinstance(cursor, int):
            raise Refused(Status.BAD_REQUEST, f"{name} must be an integer")
        if cursor == 0:
            return 0
        tag, position = divmod(cursor, SCAN_POSITIONS)
        if tag != self._scan_tag:
            raise Refused(Status.BAD_CURSOR, "unknown cursor (from another server run?); start again at 0")
        return position

    @staticmethod
    def _check_count(count: Any, name: str) -> int:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise Refused(Status.BAD_REQUEST, f"{name} must be a positive integer")
        return count

    def _check_records(self, records: Any, name: str) -> list[Record]:
        """Records ``[key, value or nil, version, deadline or nil]``, all checked before any is applied.

        A version more than :data:`~common.limits.MAX_VERSION_AHEAD_S`
        ahead of this server's clock is refused: applying it would move the
        clock, and so every later write, that far ahead.
        """
        if not isinstance(records, list):
            raise Refused(Status.BAD_REQUEST, f"{name} must be an array of records")
        if len(records) > self.limits.max_batch_keys:
            raise Refused(Status.TOO_LARGE, f"more than {self.limits.max_batch_keys} records in one request")
        latest_ms = self.store.hlc.now_ms() + int(MAX_VERSION_AHEAD_S * 1000)
        latest_deadline = self._clock() + MAX_TTL_S
        checked: list[Record] = []
        for record in records:
            if not isinstance(record, list) or len(record) != 4:
                raise Refused(Status.BAD_REQUEST, "a record must be an array [key, value, version, deadline]")
            key, value, version, deadline = record
            key = self._check_key(key, name)
            if value is not None:
                value = self._check_value(value, name)
            try:
                version = as_version(version, MAX_NODE_NAME_BYTES)
            except ValueError as exc:
                raise Refused(Status.BAD_REQUEST, f"record of {key[:64]!r}: {exc}") from None
            if version[0] > latest_ms:
                raise Refused(Status.BAD_REQUEST, f"record of {key[:64]!r}: its version is more than "
                              f"{MAX_VERSION_AHEAD_S:.0f} s ahead of this server's clock")
            if deadline is not None:
                if (isinstance(deadline, bool) or not isinstance(deadline, (int, float))
                        or not 0 < deadline <= latest_deadline):
                    raise Refused(Status.BAD_REQUEST, f"record of {key[:64]!r}: a deadline must be nil or "
                                  f"Unix seconds above 0, at most {MAX_TTL_S:.0f} s ahead")
                deadline = float(deadline)
            checked.append((key, value, version, deadline))
        return checked

    def _check_requests(self, requests: Any, name: str) -> list[Any]:
        if not isinstance(requests, list):
            raise Refused(Status.BAD_REQUEST, "batch takes an array of requests")
        if len(requests) > self.limits.max_batch_keys:
            raise Refused(Status.TOO_LARGE, f"more than {self.limits.max_batch_keys} requests in one batch")
        return requests

    @staticmethod
    def _check_entries(entries: Any, name: str) -> dict[str, Entry]:
        try:
            return parse_entries(entries, now_ms())
        except ValueError as exc:
            raise Refused(Status.BAD_REQUEST, str(exc)) from None

    # -- operations: one per row of the table, each with its checked arguments --

    def op_ping(self) -> str:
        return "PONG"

    def op_get(self, key: str) -> str | None:
        value = self.store.get(key)
        if value is not None and len(value) > _UNCHECKED_CHARS:
            self._admit_reply(_text_bytes(value) + 8)
        return value

    def op_set(self, key: str, value: str, ttl_s: float | None = None, nx: bool = False, xx: bool = False) -> bool:
        return self.store.set(key, value, ttl_s, nx, xx)

    def op_del(self, key: str) -> bool:
        return self.store.delete(key)

    def op_exists(self, key: str) -> bool:
        return self.store.exists(key)

    def op_mget(self, keys: list[str]) -> list[str | None]:
        get = self.store.get
        values: list[str | None] = []
        size = 6 * len(keys)  # 5 for each str header, 1 for each nil
        limit = self._reply_limit - self._batch_bytes
        for key in keys:
            value = get(key)
            values.append(value)
            if value is not None:
                size += len(value)
                if size > limit:  # refused before the rest is read: the compact table makes each a new str
                    self._admit_reply(size)
        if size > _UNCHECKED_CHARS:
            self._admit_reply(size + sum(_text_bytes(v) - len(v) for v in filter(None, values) if not v.isascii()))
        return values

    def op_mset(self, pairs: dict[str, str], ttl_s: float | None = None) -> bool:
        self.store.set_many(pairs, ttl_s)
        return True

    def op_keys(self, pattern: str, cursor: int, count: int) -> list[Any]:
        """One page of a scan from position ``cursor``, which stops after :data:`KEYS_SLICE_S` of scanning.

        In a ``batch`` the slice is shared: it starts at the first ``keys``
        element, and an element that comes after it has run out is answered
        with its own cursor and no keys (a cursor 0 becomes this run's cursor
        for the start), so a batch of scans cannot hold up the server either.
        """
        deadline = self._scan_slice()
        if deadline is None:
            return [self._scan_tag * SCAN_POSITIONS + cursor, []]
        room = self._reply_limit - self._batch_bytes
        try:
            next_position, keys = self.store.scan(cursor, pattern, min(count, self.limits.max_scan_count),
                                                  deadline, room // 2)
        except PatternTooComplex as exc:
            raise Refused(Status.TOO_LARGE, str(exc)) from None
        size = 16 + 5 * len(keys) + sum(map(len, keys))
        if size > _UNCHECKED_CHARS:
            self._admit_reply(size + sum(_text_bytes(key) - len(key) for key in keys if not key.isascii()))
        return [next_position and self._scan_tag * SCAN_POSITIONS + next_position, keys]

    def op_getv(self, keys: list[str]) -> list[Record | None]:
        record = self.store.record
        records = [record(key) for key in keys]
        size = sum(_text_bytes(r[0]) + (_text_bytes(r[1]) if r[1] is not None else 0) + 48
                   for r in records if r is not None)
        if size > _UNCHECKED_CHARS:
            self._admit_reply(size)
        return records

    def op_putv(self, records: list[Record]) -> list[bool]:
        put_if_newer = self.store.put_if_newer
        return [put_if_newer(key, value, version, deadline) for key, value, version, deadline in records]

    def op_scanv(self, cursor: int, count: int) -> list[Any]:
        """One page of every record, tombstones included; paged and time-sliced as :meth:`op_keys`."""
        deadline = self._scan_slice()
        if deadline is None:
            return [self._scan_tag * SCAN_POSITIONS + cursor, []]
        room = self._reply_limit - self._batch_bytes
        next_position, records = self.store.scan_records(cursor, min(count, self.limits.max_scan_count), deadline,
                                                         room // 2)
        size = 16 + sum(_text_bytes(r[0]) + (_text_bytes(r[1]) if r[1] is not None else 0) + 48 for r in records)
        if size > _UNCHECKED_CHARS:
            self._admit_reply(size)
        return [next_position and self._scan_tag * SCAN_POSITIONS + next_position, records]

    def op_node(self) -> dict[str, Any]:
        return self.members.node()

    def _scan_slice(self) -> float | None:
        """The perf_counter time a scan page must stop at; None if the batch's slice has run out."""
        now = time.perf_counter()
        deadline = self._scan_deadline
        if deadline is None:
            return now + KEYS_SLICE_S
        if not deadline:
            deadline = self._scan_deadline = now + KEYS_SLICE_S
        elif now >= deadline:
            return None
        return deadline

    def op_ttl(self, key: str) -> float:
        return self.store.ttl(key)

    def op_incr(self, key: str, delta: int) -> int:
        return self.store.incr(key, delta)

    def op_cas(self, key: str, expected: str, value: str, ttl_s: float | None = None) -> bool:
        return self.store.cas(key, expected, value, ttl_s)

    def op_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "uptime_s": round(self._clock() - self._started, 3),
            "keys": len(self.store),
            "keys_with_ttl": self.store.keys_with_ttl,
            "tombstones": self.store.tombstones,
            "expired_keys": self.store.expired_total,
            "memory_bytes": self.store.memory_bytes,
            "rss_bytes": rss_bytes(),
            "ops": dict(self.op_counts),
            "errors": dict(self.error_counts),
            "limits": vars(self.limits).copy(),
        }
        for name, section in self._sections.items():
            stats[name] = section()
        return stats

    def op_members(self) -> dict[str, Any]:
        return self.members.reply()

    def op_announce(self, entries: dict[str, Entry]) -> dict[str, bool]:
        return self.members.merge(entries)

    def op_leave(self) -> dict[str, Any]:
        try:
            return self.members.leave()
        except ValueError as exc:
            raise Refused(Status.BAD_REQUEST, str(exc)) from None

    @property
    def sections(self) -> Mapping[str, Callable[[], dict[str, Any]]]:
        """The extra ``stats`` sections, by name (the metrics endpoint exports them too)."""
        return self._sections

    def batch_limit(self, count: int) -> int:
        """The bytes the replies of a ``batch`` of ``count`` requests may take together (see :meth:`op_batch`)."""
        return self._reply_limit - _BATCH_HEADER_BYTES - count * len(NOT_RUN)

    def answer_in_batch(self, request: list[Any], limit: int, used: int) -> bytes:
        """The reply to one decoded element of a ``batch`` whose replies may take ``limit`` bytes, ``used`` so far.

        As :meth:`op_batch` answers each element: the compiled loop
        (server/_cloop.pyx) runs a batch itself, and hands over the elements
        whose replies the limits may change.
        """
        self._reply_limit, self._batch_bytes, self._scan_deadline = limit, used, 0.0
        try:
            return self._answer(request, True)
        finally:
            self._reply_limit, self._batch_bytes, self._scan_deadline = self.max_reply_bytes, 0, None

    def op_batch(self, requests: list[Any]) -> bytes:
        """The whole reply ``[0, [reply, ...]]``: each request answered as if it came alone, in order.

        The replies are already msgpack, so the batch reply is their
        concatenation behind an array header, not a re-encoding. They share
        the reply limit: once they have used it up, the remaining requests
        are not run and each gets :data:`NOT_RUN` (room for those is kept
        from the start, so the whole reply stays within the limit).
        """
        limit = self.batch_limit(len(requests))
        if limit < SMALL_REPLY_BYTES:
            return self._error(Status.TOO_LARGE, f"a batch of {len(requests)} requests could need a reply over "
                               f"the reply limit of {self._reply_limit} bytes")
        answer = self._answer
        replies: list[bytes] = []
        append = replies.append
        full = limit - SMALL_REPLY_BYTES  # past it, not even a small reply is sure to fit
        used = 0
        self._reply_limit, self._scan_deadline = limit, 0.0
        try:
            for request in requests:
                if used > full:
                    append(NOT_RUN)
                    continue
                self._batch_bytes = used
                reply = answer(request, True)
                used += len(reply)
                append(reply)
        finally:
            self._reply_limit, self._batch_bytes, self._scan_deadline = self.max_reply_bytes, 0, None
        return _BATCH_OK + _array_header(len(replies)) + b"".join(replies)


def _check_ttl(ttl: Any, name: str) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
        raise Refused(Status.BAD_REQUEST, f"{name} must be a number of seconds")
    if not 0 < ttl <= MAX_TTL_S:
        raise Refused(Status.BAD_REQUEST, f"{name} must be above 0 and at most {MAX_TTL_S:.0f}")
    return float(ttl)


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise Refused(Status.BAD_REQUEST, f"option {name} must be true or false")
    return value


_OPTION_CHECKS: dict[str, _Check] = {"ttl": _check_ttl, "flag": _check_flag}


class _OptionChecks(NamedTuple):
    """An op's options as the handler checks them (see :func:`_checked_options`)."""

    checks: tuple[tuple[str, _Check], ...]  # (name, check), in the row's order
    exclusions: tuple[tuple[str, str], ...]  # pairs that exclude each other, each once


def _exclusions(options: tuple[Option, ...]) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for option in options:
        if option.excludes and (option.excludes, option.name) not in pairs:
            pairs.append((option.name, option.excludes))
    return tuple(pairs)


def _checked_options(options: _OptionChecks, given: dict[str, Any]) -> dict[str, Any]:
    """An op's options from the request's map, each checked by its kind, then their exclusions.

    An option absent or nil is left out (the op's default applies).
    """
    checked: dict[str, Any] = {}
    for name, check in options.checks:
        value = given.get(name)
        if value is not None:
            checked[name] = check(value, name)
    for name, excluded in options.exclusions:
        if checked.get(name) and checked.get(excluded):
            raise Refused(Status.BAD_REQUEST, f"{name} and {excluded} exclude each other")
    return checked


def _callers(function: Callable[..., Any], checks: tuple[tuple[int, _Check, str], ...], options: _OptionChecks,
             before: ArgsHook | None, after: ArgsHook | None) -> tuple[_Call, _CallWithOptions]:
    """``function`` called with ``args`` checked by ``checks`` (in place), without and with options.

    An op of up to two arguments checked in order, with no memory hooks (the
    commonest requests), gets a call of its own: the loop over its checks
    measured about 1000 CPU instructions more per request (valgrind, a
    quarter of what the handler adds to decoding).
    """

    def call_with_options(args: list[Any], given: dict[str, Any]) -> Any:
        for index, check, name in checks:
            args[index] = check(args[index], name)
        kwargs = _checked_options(options, given) if given else _NO_OPTIONS
        if before is not None:
            before(args)
        result = function(*args, **kwargs)
        if after is not None:
            after(args)
        return result

    if before is None and after is None and all(index == at for at, (index, _, _) in enumerate(checks)):
        # Positional arguments are evaluated before a ** mapping: the options are checked after them.
        if not checks:
            return (lambda args: function(),
                    lambda args, given: function(**_checked_options(options, given)))
        if len(checks) == 1:
            ((_, check, name),) = checks
            return (lambda args: function(check(args[0], name)),
                    lambda args, given: function(check(args[0], name), **_checked_options(options, given)))
        if len(checks) == 2:
            (_, check0, name0), (_, check1, name1) = checks
            return (lambda args: function(check0(args[0], name0), check1(args[1], name1)),
                    lambda args, given: function(check0(args[0], name0), check1(args[1], name1),
                                                 **_checked_options(options, given)))
    return lambda args: call_with_options(args, _NO_OPTIONS), call_with_options


_NO_OPTIONS: dict[str, Any] = {}


def rss_bytes() -> int:
    """Resident memory of this process (Linux), or 0 where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0

