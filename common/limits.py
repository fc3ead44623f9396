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

#: Largest reply the server builds: a request whose reply (a ``batch``'s
#: replies together) would be larger is refused before the reply is built.
#: As large as the largest request, so what a client may send it can read back.
MAX_REPLY_BYTES = MAX_MESSAGE_BYTES

#: Reply bytes one connection may have queued, not yet taken by the kernel
#: (Redis's client-output-buffer-limit); past it the server drops them and
#: disconnects the peer. Two largest replies.
MAX_PEER_OUTPUT_BYTES = 2 * MAX_REPLY_BYTES

#: Reply bytes all connections together may have queued; past it the peer
#: with the most is disconnected, until the total is back under.
MAX_OUTPUT_BYTES = 8 * MAX_REPLY_BYTES

#: Replies up to this size are never checked against the reply limit, nor
#: made room for under --max-memory: they cost little to build, and ZeroMQ's
#: ZMQ_SNDHWM bounds those queued to MAX_QUEUED_MESSAGES per connection.
SMALL_REPLY_BYTES = 8 * 1024

#: Replies over this size are sent without a copy and counted against the
#: output budgets until ZeroMQ has handed them to the kernel (a MessageTracker
#: says when); smaller ones are copied, as pyzmq itself does below this size
#: (zmq.COPY_THRESHOLD): tracking a reply costs more than copying one this
#: small. With --max-memory, replies over SMALL_REPLY_BYTES are counted.
TRACKED_REPLY_BYTES = 64 * 1024

#: How long one ``keys`` page may scan before it returns its cursor, so that
#: other clients are answered in between (Redis's SCAN stops on a count only).
KEYS_SLICE_S = 0.005

#: Most characters a ``keys`` pattern may hold in its parts between two ``*``
#: that contain ``?`` or ``[...]``: those parts are searched position by
#: position, so they bound the matching time per key (the rest of a pattern
#: is matched in time linear in the key's length).
MAX_PATTERN_SEARCH_CHARS = 32


#: Longest node name, in UTF-8 bytes (``--node-name``, and the node of a
#: version in a ``putv`` record): a DNS name is at most 253.
MAX_NODE_NAME_BYTES = 255

#: How far ahead of this server's wall clock a version it receives may be,
#: in seconds; a ``putv`` carrying a later one is refused. The clock moves
#: past every version it accepts, so without a bound one record stamped
#: years ahead would make every later write of the cluster carry that date.
#: CockroachDB refuses a node whose clock is more than 500 ms off; a minute
#: leaves room for clocks that NTP has not yet corrected.
MAX_VERSION_AHEAD_S = 60.0


def utf8_over(text: str, limit: int) -> bool:
    """True if ``text`` takes more than ``limit`` bytes as UTF-8 (cheap when short)."""
    if len(text) * 4 <= limit:
        return False
    return len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit


def text_bytes(text: str) -> int:
    """``text``'s UTF-8 bytes (encoded to count only if it is not ASCII)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class Limits:
    """The limits one server enforces; defaults are the constants above."""

    max_key_bytes: int = MAX_KEY_BYTES
    max_value_bytes: int = MAX_VALUE_BYTES
    max_batch_keys: int = MAX_BATCH_KEYS
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_scan_count: int = MAX_SCAN_COUNT
    max_pattern_bytes: int = MAX_PATTERN_BYTES
    max_reply_bytes: int = MAX_REPLY_BYTES
    max_peer_output_bytes: int = MAX_PEER_OUTPUT_BYTES
    max_output_bytes: int = MAX_OUTPUT_BYTES
