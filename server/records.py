"""Checksummed records: the on-disk framing of journals and snapshots.

Every data file starts with an 8-byte magic naming its kind, then holds
records, each::

    length      u32 little-endian   bytes of payload
    crc         u32 little-endian   CRC-32 of the payload
    header_crc  u32 little-endian   CRC-32 of the 8 bytes above

The header has its own checksum so that a flipped bit in a length in the
middle of a file is reported as corruption there, instead of looking like a
record that runs past the end of the file (which is what a crash mid-append
leaves, and which recovery forgives).

:func:`scan` tells the two apart. A *torn tail* is damage that reaches the
end of the file: a header or payload cut short, or a last record whose
checksum fails, or a tail of zero bytes (what a power loss can leave after
the file grew). Anything else that fails a checksum is *corruption*, and is
reported with its file and offset.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

JOURNAL_MAGIC = b"MLJRNL1\n"
SNAPSHOT_MAGIC = b"MLSNAP1\n"
MAGIC_BYTES = 8

_HEADER = struct.Struct("<II")
HEADER_BYTES = _HEADER.size + 4


def frame(payload: bytes) -> bytes:
    """One record holding ``payload``."""
    head = _HEADER.pack(len(payload), zlib.crc32(payload))
    return head + zlib.crc32(head).to_bytes(4, "little") + payload


@dataclass
class Scan:
    """What :func:`scan` found in one file.

    ``payloads`` are the valid records in order; ``valid_bytes`` is where the
    valid prefix ends. ``torn_at`` is the offset of a torn tail (None if the
    file ends cleanly); ``corrupt_at`` the offset of the first corrupt record
    (None if there is none) with ``reason`` saying what failed.
    """

    size: int
    payloads: list[memoryview] = field(default_factory=list)
    valid_bytes: int = 0
    torn_at: int | None = None
    corrupt_at: int | None = None
    reason: str = ""


def scan(data: bytes, magic: bytes) -> Scan:
    """Split the bytes of one data file into records and classify any damage."""
    size = len(data)
    result = Scan(size=size)
    if size < MAGIC_BYTES:
        if data != magic[:size]:
            result.corrupt_at, result.reason = 0, "not a memlookup data file of this kind"
        elif size:
            result.torn_at = 0  # the header itself was cut short
        return result
    if data[:MAGIC_BYTES] != magic:
        result.corrupt_at, result.reason = 0, "not a memlookup data file of this kind"
        return result
    view = memoryview(data)
    offset = MAGIC_BYTES
    while offset < size:
        if size - offset < HEADER_BYTES or _zeros(view[offset:]):
            result.torn_at = offset
            break
        head = view[offset:offset + 8]
        length, crc = _HEADER.unpack(head)
        if zlib.crc32(head) != int.from_bytes(view[offset + 8:offset + 12], "little"):
            result.corrupt_at, result.reason = offset, "record header checksum mismatch"
            break
        end = offset + HEADER_BYTES + length
        if end > size:
            result.torn_at = offset
            break
        payload = view[offset + HEADER_BYTES:end]
        if zlib.crc32(payload) != crc:
            if end == size:
                result.torn_at = offset
            else:
                result.corrupt_at, result.reason = offset, "record checksum mismatch"
            break
        result.payloads.append(payload)
        offset = end
    result.valid_bytes = offset
    return result


def _zeros(view: memoryview) -> bool:
    return not any(view[:4096]) and not any(view)
