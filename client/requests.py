"""Requests built and replies read, with no I/O: what every client shares.

The sans-I/O core of the client library (as h11 is for HTTP): a
:class:`Command` turns a method's arguments into a checked request and a
request into frame bytes, and turns a reply frame into the Python value the
method returns, or raises the error the reply stands for. Nothing here opens
a socket or waits, so every way of sending -- :class:`client.Client`'s
lockstep Lazy Pirate, pipelines, :class:`client.ClusterClient`'s routing and
the asyncio clients -- uses the same code, driven by the table of operations
(:mod:`common.ops`): each parameter is checked by its :class:`~common.ops.Kind`,
each option by its kind, and a write gets a request id from
:class:`RequestIds`.

The checks here are the ones that need no server: types, and options that
exclude each other. Sizes are the server's limits, which may not be the
defaults, so the server checks them (and says which).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, cast

from common.errors import (
    InvalidRequestError,
    NotAnIntegerError,
    OutOfMemoryError,
    PersistenceError,
    ServerError,
)
from common.ops import Kind, Op
from common.protocol import ProtocolError, Status, decode_reply, encode_request

T = TypeVar("T")

#: :attr:`Command.missing` of a command that is not a cluster READ.
NO_MISS: Any = object()

_ERRORS: dict[int, type[ServerError]] = {
    Status.NOT_INTEGER: NotAnIntegerError,
    Status.OUT_OF_MEMORY: OutOfMemoryError,
    Status.PERSISTENCE: PersistenceError,
}
_CALLER_MISTAKES = frozenset(
    {
        Status.BAD_REQUEST,
        Status.UNKNOWN_OP,
        Status.WRONG_ARITY,
        Status.TOO_LARGE,
        Status.UNSUPPORTED_VERSION,
        Status.BAD_CURSOR,
    }
)


def result(status: int, payload: Any) -> Any:
    """The payload of a success; the error a refusal stands for, raised.

    Raises:
        InvalidRequestError: the server found the request malformed or over a limit.
        ServerError: (or a subclass) the server refused it.
    """
    if status != Status.OK:
        message = str(payload)
        if status in _CALLER_MISTAKES:
            raise InvalidRequestError(message, status)
        raise _ERRORS.get(status, ServerError)(message, status)
    return payload


def payload(frame: bytes) -> Any:
    """The payload of a reply frame, or the error it carries, raised (see :func:`result`)."""
    try:
        status, body = decode_reply(frame)
    except ProtocolError as exc:
        raise ServerError(str(exc), Status.INTERNAL) from None
    return result(status, body)


# -- argument checks, one per Kind: each returns the value as it goes on the wire ---------


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a str, not {type(value).__name__}")
    return value


def _keys(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a list of str, not one str")
    try:
        keys = list(value)
    except TypeError:
        raise InvalidRequestError(f"{name} must be a list of str, not {type(value).__name__}") from None
    for key in keys:
        if not isinstance(key, str):
            raise InvalidRequestError(f"each key must be a str, not {type(key).__name__}")
    return keys


def _pairs(name: str, value: Any) -> dict[str, str]:
    try:
        pairs = dict(value)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"{name} must be a mapping of str to str, not {type(value).__name__}") from None
    for key, text in pairs.items():
        if not isinstance(key, str) or not isinstance(text, str):
            bad = key if not isinstance(key, str) else text
            raise InvalidRequestError(f"keys and values must be str, not {type(bad).__name__}")
    return pairs


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an int, not {type(value).__name__}")
    return value


def _count(name: str, value: Any) -> int:
    if value is None:
        from common.limits import DEFAULT_SCAN_COUNT  # here: the limits module costs a CLI command start-up time

        return DEFAULT_SCAN_COUNT
    if _integer(name, value) < 1:
        raise InvalidRequestError(f"{name} must be at least 1, not {value}")
    return int(value)


def _unchecked(name: str, value: Any) -> Any:
    return value


_CHECKS: dict[Kind, Callable[[str, Any], Any]] = {
    Kind.KEY: _text,
    Kind.VALUE: _text,
    Kind.PATTERN: _text,
    Kind.KEYS: _keys,
    Kind.PAIRS: _pairs,
    Kind.INT: _integer,
    Kind.CURSOR: _integer,
    Kind.COUNT: _count,
    Kind.REQUESTS: _unchecked,  # batch: built by pipelines from checked requests
    Kind.ENTRIES: _unchecked,  # announce: sent by nodes, checked by the server (common/membership.py)
    Kind.RECORDS: _unchecked,  # putv: records a node or cluster client was given, checked by the server
}


def _ttl(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise InvalidRequestError(f"ttl_s must be a positive number of seconds, not {value!r}")
    return value


class Command(Generic[T]):
    """One operation as a client sends it: argument checks, the frame, the reply's value.

    Args:
        op: the operation's row in :data:`common.ops.OPS`.
        convert: turns a success's payload into what the method returns
            (``ping``'s ``"PONG"`` into True); the payload itself by default.
        missing: for an op a cluster routes as a READ, the value that means
            the key is not on that node (a cluster client then asks the next owner).
    """

    __slots__ = ("_checks", "_convert", "_option_kinds", "_text_only", "missing", "name", "op", "writes")

    def __init__(self, op: Op, convert: Callable[[Any], T] | None = None, missing: Any = NO_MISS) -> None:
        self.op = op
        self.name = op.name
        self.writes = op.writes
        self.missing = missing
        self._convert = convert
        self._checks = tuple((param.name, _CHECKS[param.kind]) for param in op.params)
        #: Every argument a str (get, set, del...): checked by one loop, the common case.
        self._text_only = all(check is _text for _, check in self._checks)
        self._option_kinds = {option.name: option for option in op.options}

    def check(self, args: tuple[Any, ...], options: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any] | None]:
        """``args`` (in the op's order) as they go on the wire, and the options map
        (None when empty: options left at their defaults, None or False, are not sent).

        Raises:
            InvalidRequestError: an argument of the wrong type, a bad TTL,
                options that exclude each other.
        """
        return list(self._checked(args)), self._options(options)

    def _checked(self, args: tuple[Any, ...]) -> tuple[Any, ...] | list[Any]:
        checks = self._checks
        if len(args) != len(checks):
            raise TypeError(f"{self.name} takes {len(checks)} arguments, got {len(args)}")
        if self._text_only:
            for value in args:
                if type(value) is not str:  # a str subclass, or a mistake: the full checks say which
                    break
            else:
                return args
        return [check(name, value) for (name, check), value in zip(checks, args, strict=True)]

    def _options(self, options: Mapping[str, Any]) -> dict[str, Any] | None:
        if options:
            for value in options.values():
                if value is not None and value is not False:
                    return self._wire_options(options)
        return None

    def _wire_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        for name, value in options.items():
            option = self._option_kinds.get(name)
            if option is None:
                raise TypeError(f"{self.name} has no option {name!r}")
            if value is None or value is False:
                continue
            wire[name] = _ttl(value) if option.kind == "ttl" else True
            if option.excludes and options.get(option.excludes):
                raise InvalidRequestError(f"{name} and {option.excludes} exclude each other")
        return wire

    def request(self, args: tuple[Any, ...], options: Mapping[str, Any]) -> Request[T]:
        """A checked request (see :meth:`check`), for a client that routes it before it frames it."""
        return Request(self, *self.check(args, options))

    def frame(self, args: tuple[Any, ...], options: Mapping[str, Any], rids: RequestIds) -> bytes:
        """The checked request's frame (see :meth:`check`), with a request id from ``rids`` if it writes."""
        checked, wire = self._checked(args), self._options(options)
        if self.writes:
            rid = rids.next()
            wire = {**wire, "rid": rid} if wire else {"rid": rid}
        return encode_request(self.name, *checked, options=wire)

    def value(self, status: int, body: Any) -> T:
        """What the method returns for a reply's ``status`` and payload; a refusal raised."""
        if self._convert is None:
            return cast(T, result(status, body))
        return self._convert(result(status, body))

    def parse(self, frame: bytes) -> T:
        """What the method returns for a reply frame; a refusal raised (see :func:`result`)."""
        try:
            status, body = decode_reply(frame)
        except ProtocolError as exc:
            raise ServerError(str(exc), Status.INTERNAL) from None
        return self.value(status, body) if status or self._convert is not None else cast(T, body)

    def __repr__(self) -> str:
        return f"Command({self.name!r})"


class Request(Generic[T]):
    """A checked call of one command: its wire arguments and options (no request id yet)."""

    __slots__ = ("args", "command", "options")

    def __init__(self, command: Command[T], args: list[Any], options: dict[str, Any] | None) -> None:
        self.command = command
        self.args = args
        self.options = options

    def frame(self, rid: str | None = None) -> bytes:
        """The request frame; ``rid`` is added to the options (a write's request id)."""
        options = self.options
        if rid is not None:
            options = {**options, "rid": rid} if options else {"rid": rid}
        return encode_request(self.command.name, *self.args, options=options)

    def __repr__(self) -> str:
        return f"Request({self.command.name!r}, {self.args!r:.80}, {self.options!r})"


class RequestIds:
    """The ids a client gives its writes: a random client id and a counter.

    A write carries one so that resending it is safe: a server that already
    applied it answers with the reply it gave the first time. In a child
    after ``os.fork()`` a new client id is drawn, or parent and child would
    send the same ids and the server would answer one with the other's reply.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._client_id = os.urandom(8).hex()
        self._sequence = itertools.count(1)

    def next(self) -> str:
        """A request id no other write of this client (in this process) has."""
        if self._pid != os.getpid():
            self._renew_after_fork()
        return f"{self._client_id}:{next(self._sequence)}"

    def frame(self, request: Request[Any]) -> bytes:
        """``request``'s frame, with a new request id if it is a write."""
        return request.frame(self.next() if request.command.writes else None)

    def _renew_after_fork(self) -> None:
        from client.pool import fork_lock

        with fork_lock():
            if self._pid != os.getpid():
                self._client_id = os.urandom(8).hex()
                self._sequence = itertools.count(1)
                self._pid = os.getpid()
