"""Checksummed records: the on-disk framing of journals and snapshots.

Every data file starts with an 8-byte magic naming its kind and format, then
holds records, each::

    length      u32 little-endian   bytes of payload
    crc         u32 little-endian   CRC-32 of the payload
    header_crc  u32 little-endian   CRC-32 of the 8 bytes above

The header has its own checksum so that a flipped bit in a length in the
middle of a file is reported as corruption there, instead of looking like a
record that runs past the end of the file (which is what a crash mid-append
leaves, and which recovery forgives).

What the payloads hold (msgpack) depends on the format the magic names:

``MLJRNL3`` journal (this version)
    Record 0 is the header, a map ``{"fsync": POLICY}``: the ``--fsync``
    policy of the server that wrote every record of the file (a server
    started with another policy begins a new journal). Every later record is
    one batch, ``[changes, replies]``: ``changes`` an array of records
    ``[key, value, version, deadline]`` (``value`` nil and ``version`` an
    array ``[ms, counter, node]``: a tombstone; ``value`` and ``version``
    nil: removed, nothing left; ``deadline`` Unix seconds, a float, or nil:
    no expiry), ``replies`` an array of ``[[op, rid], reply]``: the reply
    (bin: the encoded reply frame) that each write of the batch carrying a
    request id got.
``MLSNAP3`` snapshot (this version)
    Records ``[entries, replies]`` of the same shapes (an entry is a live
    key's record or a tombstone), up to 512 of either per record, then an
    end record with an empty payload (a snapshot without it is incomplete).
``MLJRNL2`` / ``MLSNAP2`` (memlookup before versions, still read)
    As above, but a change or entry is ``[key, value, deadline]`` (``value``
    nil: deleted): its key loads with version ``[0, 0, ""]``, older than
    every version written since.
``MLJRNL1`` / ``MLSNAP1`` (memlookup 0.1.0, still read)
    No header record; a journal record is a bare ``changes`` array of the
    ``MLJRNL2`` shape, a snapshot record a bare ``entries`` array; no replies.

:func:`scan` tells damage apart. A *torn tail* is damage that reaches the
end of the file: a header or payload cut short, a tail of zero bytes (what a
power loss can leave after the file grew), or a last record that is whole
but fails its checksum (``Scan.torn_whole``; whether that is forgiven
depends on the fsync policy that wrote it, see server/datadir.py).
Anything else that fails a checksum is *corruption*, and is reported with
its file and offset.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

JOURNAL_MAGIC = b"MLJRNL3\n"
SNAPSHOT_MAGIC = b"MLSNAP3\n"
#: The formats written before versions: read, never written.
JOURNAL_MAGIC_V2 = b"MLJRNL2\n"
SNAPSHOT_MAGIC_V2 = b"MLSNAP2\n"
#: The formats of memlookup 0.1.0: read, never written.
JOURNAL_MAGIC_V1 = b"MLJRNL1\n"
SNAPSHOT_MAGIC_V1 = b"MLSNAP1\n"
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

    ``magic`` is the file's magic (empty if the file is shorter than one);
    ``payloads`` are the valid records in order; ``valid_bytes`` is where the
    valid prefix ends. ``torn_at`` is the offset of a torn tail (None if the
    file ends cleanly), and ``torn_whole`` says that the torn record is
    complete but fails its payload checksum; ``corrupt_at`` is the offset of
    the first corrupt record (None if there is none) with ``reason`` saying
    what failed.
    """

    size: int
    magic: bytes = b""
    payloads: list[memoryview] = field(default_factory=list)
    valid_bytes: int = 0
    torn_at: int | None = None
    torn_whole: bool = False
    corrupt_at: int | None = None
    reason: str = ""


def scan(data: bytes, magics: tuple[bytes, ...]) -> Scan:
    """Split the bytes of one data file into records and classify any damage.

    ``magics`` are the formats accepted, each an 8-byte magic.
    """
    size = len(data)
    result = Scan(size=size)
    if size < MAGIC_BYTES:
        if not any(data == magic[:size] for magic in magics):
            result.corrupt_at, result.reason = 0, "not a memlookup data file of this kind"
        elif size:
            result.torn_at = 0  # the header itself was cut short
        return result
    if data[:MAGIC_BYTES] not in magics:
        result.corrupt_at, result.reason = 0, "not a memlookup data file of this kind"
        return result
    result.magic = data[:MAGIC_BYTES]
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
                result.torn_at, result.torn_whole = offset, True
                result.reason = "record checksum mismatch in the last record"
            else:
                result.corrupt_at, result.reason = offset, "record checksum mismatch"
            break
        result.payloads.append(payload)
        offset = end
    result.valid_bytes = offset
    return result


def _zeros(view: memoryview) -> bool:
    return not any(view[:4096]) and not any(view)
