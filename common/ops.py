"""The table of operations: one row per op, read by everything that handles ops.

Each :class:`Op` says what an operation is called on the wire, what it takes
(positional parameters, each of a :class:`Kind`, and options), whether it
changes the store, how a cluster client routes it, and how people see it
(the client method's name, a one-line summary for ``--help`` and the
protocol reference). From this table:

* the request decoder checks arity and option names (:mod:`common.protocol`);
* the server's handler checks every argument by its kind and dispatches to
  its ``op_<name>`` function (:mod:`server.handler`), and the memory guard
  knows which arguments the table will store;
* the clients build requests and parse replies (:mod:`client.commands`),
  pipelines queue them, ``ClusterClient`` routes them by :class:`Route`;
* the CLI builds each COMMAND's parser from the row, and ``--pipe`` reads
  its lines with those parsers;
* docs/PROTOCOL.md's operation table is generated from it
  (``python3 -m common.ops``), and a test checks it is current.

Adding an operation is one row here, one handler function, one store
method, and its docs; ``tests/test_ops_table.py`` fails if a consumer lacks
a row.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Kind(enum.Enum):
    """What a positional parameter holds, and so how it is checked."""

    KEY = "key"  # str within max_key_bytes
    VALUE = "value"  # str within max_value_bytes
    KEYS = "keys"  # array of KEY, at most max_batch_keys
    PAIRS = "pairs"  # map KEY -> VALUE, at most max_batch_keys
    INT = "int"  # msgpack integer (bool and float refused)
    PATTERN = "pattern"  # str within max_pattern_bytes, a glob
    CURSOR = "cursor"  # int: 0, or a cursor this server run returned
    COUNT = "count"  # int >= 1
    REQUESTS = "requests"  # array of requests (batch)


class Route(enum.Enum):
    """How a :class:`client.ClusterClient` sends an operation."""

    READ = "read"  # first live owner; the next owner on a timeout or a miss
    WRITE = "write"  # every live owner of the key
    DECIDE = "decide"  # the first live owner decides; its outcome is copied to the others
    DELETE = "delete"  # every live node, owner or not
    READ_MANY = "read_many"  # split by first owner, sent in parallel, merged in order
    WRITE_MANY = "write_many"  # split by owner, sent in parallel
    EVERY_NODE = "every_node"  # every member (ping, stats, keys)
    NONE = "none"  # not sent through a cluster client (batch: pipelines only)


@dataclass(frozen=True)
class Param:
    """A positional parameter.

    ``stored``: the server keeps this argument in the table (the memory guard
    counts it before the write). ``metavar``/``help`` are the CLI's.
    """

    name: str
    kind: Kind
    stored: bool = False
    metavar: str = ""
    help: str = ""


@dataclass(frozen=True)
class Option:
    """An option of the request's options map (besides ``v`` and ``rid``)."""

    name: str  # on the wire, and the Python keyword
    kind: str  # "ttl" (seconds > 0) or "flag" (bool)
    help: str
    excludes: str = ""  # the option it cannot be combined with


#: Options every request may carry: protocol version and request id.
COMMON_OPTIONS = frozenset({"v", "rid"})

_TTL = Option("ttl_s", "ttl", "expire after this many seconds")


@dataclass(frozen=True)
class Op:
    """One operation of the wire protocol."""

    name: str
    params: tuple[Param, ...]
    summary: str
    reply: str  # what a success carries, for the protocol reference
    writes: bool = False
    route: Route = Route.READ
    method: str = ""  # the client method; the op's name when empty
    options: tuple[Option, ...] = ()
    cli: bool = True  # a COMMAND of the memlookup CLI
    allowed_options: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_options", COMMON_OPTIONS | {o.name for o in self.options})
        if not self.method:
            object.__setattr__(self, "method", self.name)

    @property
    def arity(self) -> int:
        return len(self.params)


_KEY = Param("key", Kind.KEY, metavar="KEY")

OPS_TABLE: tuple[Op, ...] = (
    Op("ping", (), "check that the node answers", 'str "PONG"', route=Route.EVERY_NODE),
    Op("get", (_KEY,), "the value of KEY", "str, or nil if missing or expired"),
    Op("set", (Param("key", Kind.KEY, stored=True, metavar="KEY"),
               Param("value", Kind.VALUE, stored=True, metavar="VALUE")),
       "store VALUE under KEY", "bool: stored, or false when nx/xx prevented it",
       writes=True, route=Route.WRITE,
       options=(_TTL, Option("nx", "flag", "only if KEY does not exist", excludes="xx"),
                Option("xx", "flag", "only if KEY exists", excludes="nx"))),
    Op("del", (_KEY,), "remove KEY", "bool: the key existed", writes=True, route=Route.DELETE, method="delete"),
    Op("exists", (_KEY,), "whether KEY exists", "bool"),
    Op("mget", (Param("keys", Kind.KEYS, metavar="KEY"),), "the values of several keys",
       "array of str or nil, in the order asked", route=Route.READ_MANY),
    Op("mset", (Param("pairs", Kind.PAIRS, stored=True, metavar="KEY VALUE"),),
       "store several pairs at once: all or none", "bool, always true",
       writes=True, route=Route.WRITE_MANY, options=(_TTL,)),
    Op("keys", (Param("pattern", Kind.PATTERN, metavar="PATTERN"), Param("cursor", Kind.CURSOR),
                Param("count", Kind.COUNT)),
       "one page of the keys matching a glob PATTERN", "array [next_cursor, [key, ...]]",
       route=Route.EVERY_NODE, method="scan"),
    Op("ttl", (_KEY,), "seconds KEY has left", "int -2 missing, int -1 no expiry, else float seconds"),
    Op("incr", (Param("key", Kind.KEY, stored=True, metavar="KEY"),
                Param("delta", Kind.INT, metavar="DELTA")),
       "add DELTA to the integer at KEY", "int: the new value", writes=True, route=Route.DECIDE),
    Op("cas", (_KEY, Param("expected", Kind.VALUE, metavar="EXPECTED"),
               Param("value", Kind.VALUE, stored=True, metavar="NEW")),
       "set KEY to NEW only if its value is EXPECTED", "bool: swapped",
       writes=True, route=Route.DECIDE, options=(_TTL,)),
    Op("stats", (), "the node's counters", "map (section 9.8)", route=Route.EVERY_NODE),
    Op("batch", (Param("requests", Kind.REQUESTS),), "several requests in one message, each answered alone",
       "array of replies, one per request, in order", route=Route.NONE, cli=False),
)

#: Every op by its wire name.
OPS: dict[str, Op] = {op.name: op for op in OPS_TABLE}

#: The ops that change the store; a retry of one is deduplicated by its rid.
WRITE_OPS = frozenset(op.name for op in OPS_TABLE if op.writes)
