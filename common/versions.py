"""Versions of records: what every replica compares to keep the newer of two writes.

A version is ``(ms, counter, node)``: wall-clock milliseconds and a counter
from the hybrid logical clock of the server that applied the write first
(server/clock.py), and that server's node name as the tie-break. Versions
order lexicographically, which is how Python orders tuples, so a version is
a plain tuple: comparing two costs no more than comparing two tuples, and a
million stored versions cost no object of a class of their own.

On the wire a version is a msgpack array of 3 (docs/PROTOCOL.md, "Versions").
Both sides need the same ordering and the same idea of a well-formed
version, so they live here, in ``common``.
"""

from __future__ import annotations

from typing import Any

#: ``(ms, counter, node)``.
Version = tuple[int, int, str]

#: Older than every version a clock issues: what data written before versions existed loads with.
ZERO_VERSION: Version = (0, 0, "")

#: Largest counter: the clock moves to the next millisecond rather than pass it.
MAX_COUNTER = 0xFFFF

#: Largest ``ms``: a signed 64-bit number, as every msgpack implementation can carry it.
MAX_MS = 2**63 - 1


def as_version(value: Any, max_node_bytes: int) -> Version:
    """``value`` (a decoded msgpack array) as a :data:`Version`.

    Raises:
        ValueError: not an array ``[ms, counter, node]`` with ``ms`` an int
            from 0 to :data:`MAX_MS`, ``counter`` an int from 0 to
            :data:`MAX_COUNTER` and ``node`` a str of at most
            ``max_node_bytes`` UTF-8 bytes; the message says which part.
    """
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError("a version must be an array [ms, counter, node]")
    ms, counter, node = value
    if type(ms) is not int or not 0 <= ms <= MAX_MS:
        raise ValueError(f"a version's ms must be an integer from 0 to {MAX_MS}")
    if type(counter) is not int or not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"a version's counter must be an integer from 0 to {MAX_COUNTER}")
    if type(node) is not str:
        raise ValueError("a version's node must be a string")
    if len(node) * 4 > max_node_bytes and len(node.encode("utf-8", "surrogatepass")) > max_node_bytes:
        raise ValueError(f"a version's node must be at most {max_node_bytes} bytes")
    return (ms, counter, node)

#: A record ``(key, value, version, deadline)``, as ``getv``, ``putv`` and ``scanv`` carry it: ``value`` None for a
#: tombstone (a delete), ``deadline`` wall-clock seconds or None (never expires).
Record = tuple[str, "str | None", Version, "float | None"]
