"""The limits a server enforces, each with its documented default.

Every limit can be changed on the server's command line; these are the
documented defaults (``docs/PROTOCOL.md`` lists them too).
"""

from dataclasses import dataclass

#: Longest key, in UTF-8 bytes (memcached allows 250, Redis 512 MiB).
MAX_KEY_BYTES = 1024

#: Longest value, in UTF-8 bytes.
MAX_VALUE_BYTES = 16 * 1024 * 1024

#: Most keys in one ``mget`` or ``mset`` request.
MAX_BATCH_KEYS = 10_000

#: Largest ZeroMQ message the server accepts (ZMQ_MAXMSGSIZE); a larger one
#: makes ZeroMQ drop the connection before a byte of it is decoded.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Cap on a ``keys`` request's count hint (how many keys a page examines
#: before it stops at the end of a bucket; a page may hold somewhat more).
MAX_SCAN_COUNT = 10_000

#: Page size of a ``keys`` scan when the client does not ask for one.
DEFAULT_SCAN_COUNT = 1_000

#: Longest glob pattern for ``keys``.
MAX_PATTERN_BYTES = 1024

#: Messages queued per connection in each direction (ZMQ_RCVHWM, ZMQ_SNDHWM).
#: Past it the server stops reading that peer (it waits in TCP buffers), and
#: replies to a peer that does not read them are dropped (it times out).
MAX_QUEUED_MESSAGES = 1000

#: How long one ``keys`` page may scan before it returns its cursor, so that
#: other clients are answered in between (Redis's SCAN stops on a count only).
KEYS_SLICE_S = 0.005

#: Most characters a ``keys`` pattern may hold in its parts between two ``*``
#: that contain ``?`` or ``[...]``: those parts are searched position by
#: position, so they bound the matching time per key (the rest of a pattern
#: is matched in time linear in the key's length).
MAX_PATTERN_SEARCH_CHARS = 32


def utf8_over(text: str, limit: int) -> bool:
    """True if ``text`` takes more than ``limit`` bytes as UTF-8 (cheap when short)."""
    if len(text) * 4 <= limit:
        return False
    return len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit


@dataclass(frozen=True)
class Limits:
    """The limits one server enforces; defaults are the constants above."""

    max_key_bytes: int = MAX_KEY_BYTES
    max_value_bytes: int = MAX_VALUE_BYTES
    max_batch_keys: int = MAX_BATCH_KEYS
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_scan_count: int = MAX_SCAN_COUNT
    max_pattern_bytes: int = MAX_PATTERN_BYTES
