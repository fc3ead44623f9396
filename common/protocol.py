"""The memlookup wire protocol, version 1: pure encode/decode, no sockets.

Transport: ZeroMQ request-reply. A client sends one message of one frame (a
REQ socket adds the empty delimiter frame itself) and gets one message of one
frame back. ``docs/PROTOCOL.md`` is the full specification; in short:

Request frame -- a msgpack array::

    [op, arg1, ..., argN]              # N is fixed by op (see OPS)
    [op, arg1, ..., argN, options]     # optionally followed by one map

``op`` is a string. ``options`` is a map with string keys; the ones every op
understands are ``"v"`` (protocol version, must be 1 when present) and
``"rid"`` (a request id; a write whose rid the server has seen recently gets
the reply it got the first time instead of being applied again).

Reply frame -- a msgpack array ``[status, payload]``: ``status`` 0 means
success and ``payload`` is the result; any other status is an error code from
``Status`` and ``payload`` is a human-readable message.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import msgpack


PROTOCOL_VERSION = 1


class Status(IntEnum):
    """Reply status codes. 0 is success; every other value is an error."""

    OK = 0
    BAD_REQUEST = 1  # not msgpack, not an array, wrong types, invalid UTF-8
    UNKNOWN_OP = 2
    WRONG_ARITY = 3
    TOO_LARGE = 4  # a key, value, pattern or batch over its limit
    NOT_INTEGER = 5  # incr on a value that is not a decimal int64
    OUT_OF_MEMORY = 6  # at --max-memory under the noeviction policy
    PERSISTENCE = 7  # the write could not be made durable
    UNSUPPORTED_VERSION = 8
    INTERNAL = 9  # a bug in the server; the request was not applied
    BAD_CURSOR = 10  # a keys cursor from another server run, or out of range


#: Positional argument count of each operation (options map not counted).
OPS: dict[str, int] = {
    "ping": 0,
    "get": 1,  # key
    "set": 2,  # key, value            options: ttl_s, nx, xx
    "del": 1,  # key
    "exists": 1,  # key
    "mget": 1,  # [key, ...]
    "mset": 1,  # {key: value, ...}    options: ttl_s
    "keys": 3,  # pattern, cursor, count
    "ttl": 1,  # key
    "incr": 2,  # key, delta
    "cas": 3,  # key, expected, value  options: ttl_s
    "stats": 0,
    "batch": 1,  # [request, ...]: each answered as if alone; reply [reply, ...]
}

#: Options every request may carry: protocol version and request id.
COMMON_OPTIONS = frozenset({"v", "rid"})

#: Options per operation, where it has more than the common ones.
OPTIONS: dict[str, frozenset[str]] = {
    "set": COMMON_OPTIONS | {"ttl_s", "nx", "xx"},
    "mset": COMMON_OPTIONS | {"ttl_s"},
    "cas": COMMON_OPTIONS | {"ttl_s"},
}

#: Operations that change the store; a retry of one is deduplicated by rid.
WRITE_OPS = frozenset({"set", "del", "mset", "incr", "cas"})


class ProtocolError(Exception):
    """A frame that does not follow the protocol; ``status`` says how."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_request(
    frame: bytes,
    max_str_bytes: int | None = None,
    max_items: int | None = None,
) -> tuple[str, list[Any], dict[str, Any]]:
    """Split a request frame into ``(op, args, options)``.

    The same as :func:`check_request` of :func:`unpack_request`.

    Raises:
        ProtocolError: the frame is not a valid request.
    """
    return check_request(unpack_request(frame, max_str_bytes, max_items))


def unpack_request(
    frame: bytes,
    max_str_bytes: int | None = None,
    max_items: int | None = None,
) -> Any:
    """Decode a request frame's msgpack, not yet checking its shape.

    The unpacker is bounded: strings longer than ``max_str_bytes``, arrays or
    maps with more than ``max_items`` entries (plus slack for the envelope),
    binary and extension types are refused before they are allocated, so a
    hostile header cannot make the server reserve memory it claims. The
    bounds default to the documented limits.

    Raises:
        ProtocolError: the frame is not valid msgpack within the bounds.
    """
    if max_str_bytes is None or max_items is None:
        # Imported here: a client never decodes requests, and the limits
        # module costs a one-shot CLI command measurable start-up time.
        from common import limits

        max_str_bytes = limits.MAX_VALUE_BYTES if max_str_bytes is None else max_str_bytes
        max_items = limits.MAX_BATCH_KEYS if max_items is None else max_items
    try:
        return msgpack.unpackb(
            frame,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_str_bytes,
            max_bin_len=0,
            max_ext_len=0,
            max_array_len=max_items + 8,
            max_map_len=max_items + 8,
        )
    except UnicodeDecodeError:
        raise ProtocolError(Status.BAD_REQUEST, "strings must be valid UTF-8") from None
    except msgpack.ExtraData:
        raise ProtocolError(Status.BAD_REQUEST, "trailing bytes after the request") from None
    except ValueError as exc:  # a bounded length was exceeded, or truncated input
        if "max_bin_len" in str(exc) or "max_ext_len" in str(exc):
            raise ProtocolError(Status.BAD_REQUEST, "bin and ext types are not allowed; send str") from None
        if "exceeds max_" in str(exc):
            raise ProtocolError(Status.TOO_LARGE, f"request over a size limit: {exc}") from None
        raise ProtocolError(Status.BAD_REQUEST, f"not a valid msgpack request: {exc}") from None
    except Exception as exc:  # FormatError, StackError, TypeError on bad map keys
        raise ProtocolError(Status.BAD_REQUEST, f"not a valid msgpack request: {exc}") from None


def check_request(request: Any) -> tuple[str, list[Any], dict[str, Any]]:
    """Split a decoded request into ``(op, args, options)``, checking its shape.

    Raises:
        ProtocolError: not a valid request.
    """
    if not isinstance(request, list) or not request:
        raise ProtocolError(Status.BAD_REQUEST, "a request is a non-empty msgpack array")
    op = request[0]
    if not isinstance(op, str):
        raise ProtocolError(Status.BAD_REQUEST, "the first element (op) must be a string")
    arity = OPS.get(op)
    if arity is None:
        raise ProtocolError(Status.UNKNOWN_OP, f"unknown op {op[:64]!r}")
    args = request[1:]
    options: dict[str, Any] = {}
    if len(args) == arity + 1 and isinstance(args[-1], dict):
        options = args.pop()
    if len(args) != arity:
        raise ProtocolError(
            Status.WRONG_ARITY,
            f"{op} takes {arity} argument{'s' if arity != 1 else ''} "
            f"(and an optional options map), got {len(request) - 1}",
        )
    if options:
        unknown = options.keys() - OPTIONS.get(op, COMMON_OPTIONS)
        if unknown:
            name = next(iter(unknown))
            raise ProtocolError(Status.BAD_REQUEST, f"{op} has no option {str(name)[:64]!r}")
    version = options.get("v", PROTOCOL_VERSION)
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            Status.UNSUPPORTED_VERSION,
            f"protocol version {version!r} is not supported; this server speaks {PROTOCOL_VERSION}",
        )
    return op, args, options


#: One Packer for every frame: msgpack.packb builds a new one per call, which
#: measured costs more than the packing of a small request. Packing holds the
#: GIL throughout, so sharing it between threads is safe.
_pack = msgpack.Packer().pack


def encode_request(op: str, *args: Any, options: dict[str, Any] | None = None) -> bytes:
    """Build a request frame."""
    if options:
        return _pack([op, *args, options])
    return _pack([op, *args])


_BATCH_PREFIX = _pack("batch")
_array_header = msgpack.Packer().pack_array_header


def encode_batch(requests: list[bytes]) -> bytes:
    """A ``batch`` request frame carrying already encoded request frames.

    ``["batch", [r1, r2, ...]]`` is built by concatenation: each request's
    msgpack stays as it is, behind the two array headers.
    """
    return b"\x92" + _BATCH_PREFIX + _array_header(len(requests)) + b"".join(requests)


def encode_reply(status: int, payload: Any) -> bytes:
    """Build a reply frame."""
    return _pack([status, payload])


def ok(payload: Any) -> bytes:
    """A success reply."""
    return _pack([0, payload])


def decode_reply(frame: bytes) -> tuple[int, Any]:
    """Split a reply frame into ``(status, payload)``.

    Raises:
        ProtocolError: the frame is not a valid reply.
    """
    try:
        reply = msgpack.unpackb(frame, raw=False)
    except Exception as exc:
        raise ProtocolError(Status.BAD_REQUEST, f"garbled reply from server: {exc}") from None
    if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[0], int):
        raise ProtocolError(Status.BAD_REQUEST, "garbled reply from server: not [status, payload]")
    return reply[0], reply[1]
