"""What servers and clients agree on about membership: member entries, their states, the epoch and the two rings.

A cluster whose servers run with ``--join`` keeps its membership itself: each
node holds a view, ``name -> Entry(address, state, version)``, and answers it
to the ``members`` op. An entry is written only by the node it names (so two
nodes joining at once never conflict) and spreads by ``announce`` and by
gossip; views merge entry by entry, the newer version winning. A version is
``(ms, counter, name)``: wall-clock milliseconds, a counter for changes within
one millisecond, and the writer's name, compared in that order: a version
of common/versions.py, though not from the node's hybrid logical clock (an
entry's version only has to grow with each change of that one node).

States, in the order a node goes through them::

    joining   an owner for writes, not yet trusted for reads (it is pulling its keys)
    ready     an owner for reads and writes
    leaving   no longer an owner for new writes; still read (it is pushing its keys away)
    left      gone; kept as an entry so that gossip does not bring the old one back

Keys are placed (:class:`common.placement.Placement`) over member names on two
rings: the *write ring* of the members joining or ready, and the *read ring*
of those ready or leaving. They differ only while a node joins or leaves;
then a key's owners are the union of its owners on both, so a write reaches
the node that will hold the key and a read (which asks every owner for its
version and keeps the newest) finds it where it still is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from common.address import split_node
from common.limits import MAX_NODE_NAME_BYTES, utf8_over
from common.placement import Placement
from common.versions import MAX_COUNTER, Version, as_version

JOINING, READY, LEAVING, LEFT = "joining", "ready", "leaving", "left"
STATES = (JOINING, READY, LEAVING, LEFT)
#: States whose members own keys for writes, and for reads.
WRITE_STATES = frozenset({JOINING, READY})
READ_STATES = frozenset({READY, LEAVING})

#: How often a node pulls ``members`` from another member.
GOSSIP_INTERVAL_S = 1.0

#: How often a cluster client in use asks for the membership.
REFRESH_INTERVAL_S = 1.0

#: How long a node waits after announcing ``joining`` or ``leaving`` before it
#: moves keys: every node gossips and every client in use refreshes within it,
#: so the writes made after it reach the owners of the new ring.
SETTLE_S = 2.5

#: Most entries a view (or an ``announce``) may hold.
MAX_MEMBERS = 1024

#: Longest member address (``host:port``), in characters (a DNS name is at most 253).
MAX_ADDRESS_CHARS = 300

#: How far ahead of the receiver's clock an entry's version may be: a version
#: further in the future would win against every later change of that node.
MAX_VERSION_AHEAD_MS = 24 * 3600 * 1000


class Entry(NamedTuple):
    """One member as a view holds it."""

    address: str  # host:port, where clients and other nodes reach it
    state: str  # one of STATES
    version: Version

    def wire(self) -> dict[str, Any]:
        """As the ``members`` reply and ``announce`` carry it."""
        return {"address": self.address, "state": self.state, "version": list(self.version)}


def parse_entries(raw: Any, now_ms: int) -> dict[str, Entry]:
    """Member entries from the wire (an ``announce``'s argument, a ``members`` reply's map), checked.

    Raises:
        ValueError: what is wrong with them (nothing of them is to be used).
    """
    if not isinstance(raw, dict):
        raise ValueError("member entries must be a map of name -> entry")
    if len(raw) > MAX_MEMBERS:
        raise ValueError(f"more than {MAX_MEMBERS} member entries")
    entries: dict[str, Entry] = {}
    for name, fields in raw.items():
        if not isinstance(name, str) or not name or utf8_over(name, MAX_NODE_NAME_BYTES):
            raise ValueError(f"a member name must be a string of 1 to {MAX_NODE_NAME_BYTES} bytes")
        if not isinstance(fields, dict):
            raise ValueError(f"member {name!r}: an entry must be a map with address, state and version")
        address, state, version = fields.get("address"), fields.get("state"), fields.get("version")
        if not isinstance(address, str) or len(address) > MAX_ADDRESS_CHARS:
            raise ValueError(f"member {name!r}: address must be a string host:port")
        split_node(address)  # raises ValueError naming what is wrong
        if state not in STATES:
            raise ValueError(f"member {name!r}: state must be one of {', '.join(STATES)}")
        entries[name] = Entry(address, state, _version(name, version, now_ms))
    return entries


def _version(name: str, raw: Any, now_ms: int) -> Version:
    try:
        ms, _, writer = version = as_version(raw, MAX_NODE_NAME_BYTES)
    except ValueError as exc:
        raise ValueError(f"member {name!r}: {exc}") from None
    if writer != name:
        raise ValueError(f"member {name!r}: an entry is written only by the member it names")
    if ms > now_ms + MAX_VERSION_AHEAD_MS:
        raise ValueError(f"member {name!r}: version more than {MAX_VERSION_AHEAD_MS} ms ahead of this clock")
    return version


def next_version(name: str, last: Version | None, now_ms: int) -> Version:
    """A version for ``name``'s next entry: newer than ``last``, from the clock when it moved on."""
    if last is None or now_ms > last[0]:
        return (now_ms, 0, name)
    if last[1] < MAX_COUNTER:
        return (last[0], last[1] + 1, name)
    return (last[0] + 1, 0, name)


def epoch(entries: Mapping[str, Entry]) -> int:
    """A number that changes whenever the view does, and is the same for the same view on every node."""
    text = "\n".join(f"{name} {entry.version[0]} {entry.version[1]}" for name, entry in sorted(entries.items()))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


class Rings:
    """A view's write ring and read ring, and a key's owners on them.

    Args:
        entries: the view.
        replicas: owners per key (R).

    Raises:
        ValueError: no member owns keys (every one has left).
    """

    def __init__(self, entries: Mapping[str, Entry], replicas: int) -> None:
        writers = [name for name, entry in entries.items() if entry.state in WRITE_STATES]
        readers = [name for name, entry in entries.items() if entry.state in READ_STATES]
        # A cluster of only joining (or only leaving) nodes still has a ring for each.
        self.write = Placement(writers or readers, replicas)
        self.read = Placement(readers or writers, replicas)
        #: True while a node joins or leaves: the rings differ.
        self.changing = self.write.nodes != self.read.nodes
        #: Every member that owns keys on either ring.
        self.nodes = sorted(set(self.write.nodes) | set(self.read.nodes))

    @classmethod
    def of(cls, names: list[str], replicas: int) -> Rings:
        """The one ring of a static cluster: ``names``, every one ready."""
        return cls({name: Entry(name, READY, (0, 0, name)) for name in names}, replicas)

    def owners(self, key: str) -> list[str]:
        """``key``'s owners on the write ring, and during a change its read-ring owners after them."""
        owners = self.write.owners(key)
        if self.changing:
            owners += [name for name in self.read.owners(key) if name not in owners]
        return owners

