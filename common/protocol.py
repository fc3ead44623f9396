"""The memlookup wire protocol, version 1: pure encode/decode, no sockets.

Transport: ZeroMQ request-reply. A client sends one message of one frame (a
REQ socket adds the empty delimiter frame itself) and gets one message of one
frame back. ``docs/PROTOCOL.md`` is the full specification; in short:

Request frame -- a msgpack array::

    [op, arg1, ..., argN]              # N is fixed by op (its row in common.ops)
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

import re
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import msgpack

from common.ops import OPS

PROTOCOL_VERSION = 1

#: The row of an op by name, or None. Bound once: CPython 3.11 compiles a
#: method call on a name bound by an import (``OPS.get(op)``) as an attribute
#: load that makes a bound method per call, which measured about 500 CPU
#: instructions more per request (valgrind).
_row_of = OPS.get


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


class ProtocolError(Exception):
    """A frame that does not follow the protocol; ``status`` says how."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


#: Longest array the one-shot decoder accepts. msgpack allocates a list of the
#: claimed length as soon as it reads an array header, before a single element
#: has arrived, so every nested array may cost ``claimed x 8`` bytes: with this
#: small bound a 1024-deep nest (msgpack's own depth limit) costs at most
#: 128 KiB. A frame with a longer array (mget's keys) takes the checked path.
#: Maps are not preallocated and keep the batch limit.
SMALL_ARRAY_ITEMS = 16

#: Frames up to this size are decoded in one msgpack call, as they come:
#: whatever they hold, the objects they make stay under about 90 times this
#: (1.4 MiB; an empty array costs 80 bytes for its one byte). Larger frames
#: are decoded with their values counted (:func:`_decode_counted`).
ONE_SHOT_FRAME_BYTES = 16 * 1024

#: Deepest nesting of arrays and maps in a frame over ONE_SHOT_FRAME_BYTES
#: (a valid request nests at most 4 deep: a batch holding an mget's keys).
MAX_LARGE_FRAME_NESTING = 8

#: A frame over ONE_SHOT_FRAME_BYTES may hold one msgpack value (a string, a
#: number, an array, a map's key or value...) per this many bytes, or
#: VALUES_PER_BATCH_KEY x max_batch_keys values if that is more.
FRAME_BYTES_PER_VALUE = 32

#: Values per ``max_batch_keys`` any frame may hold: a full ``batch`` of
#: ``["set", key, value, {"rid": rid}]`` holds 8 per element.
VALUES_PER_BATCH_KEY = 8


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

    The unpacker is bounded: strings longer than ``max_str_bytes``, maps with
    more than ``max_items`` entries (plus slack for the envelope), binary and
    extension types are refused before they are allocated. A frame with an
    array longer than :data:`SMALL_ARRAY_ITEMS` is first checked to hold
    every element it claims (:func:`_check_complete`), so a hostile header or
    a deep nest of arrays cannot make the server reserve memory it claims.
    A frame over :data:`ONE_SHOT_FRAME_BYTES` is decoded with its values
    counted (:func:`_decode_counted`), so that no frame makes objects many
    times its size. The bounds default to the documented limits.

    Raises:
        ProtocolError: the frame is not valid msgpack within the bounds.
    """
    if max_str_bytes is None or max_items is None:
        # Imported here: a client never decodes requests, and the limits
        # module costs a one-shot CLI command measurable start-up time.
        from common import limits

        max_str_bytes = limits.MAX_VALUE_BYTES if max_str_bytes is None else max_str_bytes
        max_items = limits.MAX_BATCH_KEYS if max_items is None else max_items
    if len(frame) > ONE_SHOT_FRAME_BYTES:
        return _decode_counted(frame, max_str_bytes, max_items)
    if frame[1:6] == b"\xa4mget" and frame[6:7] in _LONG_ARRAY_HEADERS:
        # A long key list: no first try. Its length is checked from the header.
        width = 2 if frame[6] == 0xDC else 4
        _check_array_length(int.from_bytes(frame[7:7 + width], "big"), max_items)
        return _decode_batch(frame, max_str_bytes, max_items)
    try:
        return msgpack.unpackb(
            frame,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_str_bytes,
            max_bin_len=0,
            max_ext_len=0,
            max_array_len=SMALL_ARRAY_ITEMS,
            max_map_len=max_items + 8,
        )
    except Exception as exc:  # ValueError for every bound and truncation, FormatError, StackError...
        claimed = _CLAIMED_ARRAY.match(str(exc)) if type(exc) is ValueError else None
        if claimed is None:
            raise _refusal(exc) from None
        _check_array_length(int(claimed.group(1)), max_items)
        return _decode_batch(frame, max_str_bytes, max_items)


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
    row = _row_of(op)
    if row is None:
        raise ProtocolError(Status.UNKNOWN_OP, f"unknown op {op[:64]!r}")
    arity = row.arity
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
        unknown = options.keys() - row.allowed_options
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


#: msgpack's message for an array over ``max_array_len``; group 1 is the claim.
_CLAIMED_ARRAY = re.compile(r"(\d+) exceeds max_array_len")


def _check_array_length(claimed: int, max_items: int) -> None:
    """Refuse an array header over the batch bound before anything is decoded."""
    if claimed > max_items + 8:
        raise ProtocolError(Status.TOO_LARGE, f"request over a size limit: an array of {claimed} elements")


#: Headers of arrays that may hold more than 15 elements (array 16, array 32).
_LONG_ARRAY_HEADERS = (b"\xdc", b"\xdd")


def _decode_batch(frame: bytes, max_str_bytes: int, max_items: int) -> list[Any]:
    """Decode a small request holding a long array (the key list of ``mget``).

    The frame is first checked to be complete (:func:`_check_complete`), so
    every array header is backed by its elements in the frame, and decoding
    it reserves no more than the frame's own size warrants.
    """
    _check_complete(frame)
    # The bounds of decode_request's one-pass call, but arrays up to the batch
    # limit. Both calls spell the arguments out: sharing them as **kwargs
    # measured 0.3 to 0.6 µs more per request on the hot path.
    try:
        decoded: list[Any] = msgpack.unpackb(
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
    except Exception as exc:
        raise _refusal(exc) from None
    return decoded


def _check_complete(frame: bytes, max_nesting: int = 1024) -> None:
    """Refuse a frame that is not one whole msgpack value, having built nothing.

    ``Unpacker.skip`` walks the frame without making objects: it fails on a
    frame that claims more elements than it carries, or nests deeper than
    msgpack's stack of 1024 containers. ``max_nesting`` below that is checked
    by the same walk: the frame is put inside ``1024 - max_nesting`` arrays
    of one element first, leaving it only ``max_nesting`` levels of the stack;
    that walk reads the frame in slices, so it holds no copy of a large frame.
    """
    wrapping = 1024 - max_nesting
    size = max(len(frame) + wrapping, 1)
    if wrapping:
        unpacker = msgpack.Unpacker(_Wrapped(frame, wrapping), read_size=min(_CHECK_READ_BYTES, size),
                                    max_buffer_size=size)
    else:
        unpacker = msgpack.Unpacker(max_buffer_size=size, read_size=size)
        unpacker.feed(frame)
    try:
        unpacker.skip()
    except msgpack.StackError:
        raise ProtocolError(Status.BAD_REQUEST, f"not a valid msgpack request: nested too deeply "
                                                f"(over {max_nesting} levels)") from None
    except Exception as exc:
        raise _refusal(exc) from None
    if unpacker.tell() != size:
        raise ProtocolError(Status.BAD_REQUEST, "trailing bytes after the request")


#: Bytes _check_complete reads at a time.
_CHECK_READ_BYTES = 64 * 1024


class _Wrapped:
    """A file over ``wrapping`` one-element array headers followed by ``frame``."""

    def __init__(self, frame: bytes, wrapping: int) -> None:
        self._head = b"\x91" * wrapping
        self._frame = memoryview(frame)
        self._pos = 0

    def read(self, size: int) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        chunk = self._frame[self._pos:self._pos + size]
        self._pos += len(chunk)
        return bytes(chunk)


def _decode_counted(frame: bytes, max_str_bytes: int, max_items: int) -> Any:
    """Decode a frame over ONE_SHOT_FRAME_BYTES, counting its values as they are built.

    Every array and map is counted as msgpack completes it (its hook), and
    the decode stops once the frame holds more values than its size allows.
    What exists uncounted at any moment is the elements of the containers
    still open. A first try allows containers of SMALL_ARRAY_ITEMS elements
    only (at most 1024 x 16 values uncounted); a frame with a longer one is
    checked to be complete and to nest at most :data:`MAX_LARGE_FRAME_NESTING`
    deep, then decoded with the batch limit (at most 8 x (max_items + 8)
    values uncounted).
    """
    budget = max(VALUES_PER_BATCH_KEY * max_items, len(frame) // FRAME_BYTES_PER_VALUE)
    left = budget

    def count(container: Any) -> Any:
        nonlocal left
        left -= len(container) if type(container) is list else 2 * len(container)
        if left < 0:
            raise ProtocolError(Status.TOO_LARGE, f"request over a size limit: more than {budget} msgpack "
                                f"values in a frame of {len(frame)} bytes")
        return container

    max_len = SMALL_ARRAY_ITEMS
    while True:
        try:
            return msgpack.unpackb(
                frame,
                raw=False,
                use_list=True,
                strict_map_key=True,
                max_str_len=max_str_bytes,
                max_bin_len=0,
                max_ext_len=0,
                max_array_len=max_len,
                max_map_len=max_len,
                list_hook=count,
                object_hook=count,
            )
        except ProtocolError:
            raise
        except Exception as exc:
            if max_len != SMALL_ARRAY_ITEMS or type(exc) is not ValueError or not _LONG.match(str(exc)):
                raise _refusal(exc) from None
        _check_complete(frame, MAX_LARGE_FRAME_NESTING)
        max_len, left = max_items + 8, budget


#: msgpack's message for a container over its bound.
_LONG = re.compile(r"\d+ exceeds max_(array|map)_len")


def _refusal(exc: Exception) -> ProtocolError:
    """The error reply for what the msgpack decoder raised."""
    if isinstance(exc, UnicodeDecodeError):
        return ProtocolError(Status.BAD_REQUEST, "strings must be valid UTF-8")
    if isinstance(exc, msgpack.ExtraData):
        return ProtocolError(Status.BAD_REQUEST, "trailing bytes after the request")
    if isinstance(exc, msgpack.StackError):
        return ProtocolError(Status.BAD_REQUEST, "not a valid msgpack request: nested too deeply (over 1024 levels)")
    if isinstance(exc, msgpack.OutOfData):
        return ProtocolError(Status.BAD_REQUEST, "not a valid msgpack request: incomplete input")
    if "max_bin_len" in str(exc) or "max_ext_len" in str(exc):
        return ProtocolError(Status.BAD_REQUEST, "bin and ext types are not allowed; send str")
    if isinstance(exc, ValueError) and "exceeds max_" in str(exc):
        return ProtocolError(Status.TOO_LARGE, f"request over a size limit: {exc}")
    return ProtocolError(Status.BAD_REQUEST, f"not a valid msgpack request: {exc}")


#: One Packer for every frame: msgpack.packb builds a new one per call, which
#: measured costs more than the packing of a small request. Packing holds the
#: GIL throughout, so sharing it between threads is safe.
_pack: Callable[[Any], bytes] = msgpack.Packer().pack


def encode_request(op: str, *args: Any, options: dict[str, Any] | None = None) -> bytes:
    """Build a request frame."""
    if options:
        return _pack([op, *args, options])
    return _pack([op, *args])


_BATCH_PREFIX = _pack("batch")
_array_header: Callable[[int], bytes] = msgpack.Packer().pack_array_header


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


def renew_packer() -> None:
    """Replace the shared Packer, after it packed something large.

    A Packer keeps its buffer at the largest size it ever packed, so one large
    reply would otherwise hold its size in memory for good.
    """
    global _pack
    _pack = msgpack.Packer().pack


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
