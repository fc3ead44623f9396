"""The table of operations: one row per op, read by everything that handles ops.

Each :class:`Op` says what an operation is called on the wire, what it takes
(positional parameters, each of a :class:`Kind`, and options), whether it
changes the store, how a cluster client routes it, and how people see it
(the client method's name, a one-line summary for ``--help`` and the
protocol reference). From this table:

* the request decoder checks arity and option names (:mod:`common.protocol`);
* the server's handler checks every argument by its kind and each option by
  its kind, and dispatches to its ``op_<name>`` function
  (:mod:`server.handler`); the memory guard counts the arguments the table
  will store (``stored``) before a write, and the LRU policy notes the keys
  an op names (:mod:`server.memory`, :mod:`server.eviction`);
* the clients build requests and parse replies (:mod:`client.commands`),
  pipelines queue them, ``ClusterClient`` routes them by :class:`Route`;
* the CLI builds each COMMAND's parser from the row and calls the row's
  client method (:mod:`client.cli_parser`), and ``--pipe`` reads its lines
  with those parsers;
* docs/PROTOCOL.md's operation tables are generated from it
  (``python3 docs/ops_reference.py``), and a test checks they are current.

The rows are named tuples and plain slotted objects rather than dataclasses:
every client and the one-shot CLI import this module, and ``dataclasses``
(with the methods it generates) measured 7 to 13 ms of a ~140 ms ``memlookup
NODE get`` (``python -X importtime``).

Adding an operation is one row here, one handler function, one store
method, and its docs; ``tests/test_ops_table.py`` fails if a consumer lacks
a row.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


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
    ENTRIES = "entries"  # map member name -> member entry (common/membership.py), at most MAX_MEMBERS
    RECORDS = "records"  # array of records [KEY, VALUE or nil, version, deadline or nil], at most max_batch_keys


class Route(enum.Enum):
    """How a :class:`client.ClusterClient` sends an operation."""

    READ = "read"  # every live owner's record (getv) at once; the newest answers, stale owners repaired
    WRITE = "write"  # the first live owner applies it; its record is copied to the others (putv)
    DECIDE = "decide"  # as WRITE: the first live owner also decides the condition
    DELETE = "delete"  # the owners' records first (getv, repair), then as WRITE (a tombstone is copied)
    READ_MANY = "read_many"  # READ for each key, all owners' shares in parallel
    WRITE_MANY = "write_many"  # split by first owner, sent in parallel, then copied as WRITE
    EVERY_NODE = "every_node"  # every member (ping, stats, keys)
    NONE = "none"  # not sent through a cluster client (batch: pipelines only)


class Param(NamedTuple):
    """A positional parameter.

    ``stored``: the server keeps this argument in the table (the memory guard
    counts it before the write; for an INT, the number it leads to, of up
    to 20 digits). The rest says how the CLI takes it:
    ``metavar`` and ``help`` for ``--help``; ``default``, its value when the
    word is left out (None: the word is required, or for an option, the
    client library's default applies); ``stdin``, read from standard input
    when left out or given as ``-``; ``flag``, taken as that option
    (``--count N``) instead of a positional word; ``cli`` False when the
    CLI supplies it itself (the ``keys`` cursor: the CLI walks every page).
    """

    name: str
    kind: Kind
    stored: bool = False
    metavar: str = ""
    help: str = ""
    default: str | int | None = None
    stdin: bool = False
    flag: str = ""
    cli: bool = True


class Option(NamedTuple):
    """An option of the request's options map (besides ``v`` and ``rid``).

    ``flag`` and ``metavar`` are the CLI's spelling (``--`` and the name when
    ``flag`` is empty); a "flag" option is an on/off switch there.
    """

    name: str  # on the wire, and the Python keyword
    kind: str  # "ttl" (seconds > 0) or "flag" (bool)
    help: str
    excludes: str = ""  # the option it cannot be combined with
    flag: str = ""
    metavar: str = ""


#: Options every request may carry: protocol version and request id.
COMMON_OPTIONS = frozenset({"v", "rid"})

#: The option (``true``) that makes a write answer ``[result, records]``: the records it left, which a cluster
#: client copies to the other replicas with ``putv``. Not a row's :class:`Option`: it is for cluster clients, not
#: for people (no CLI flag, no client method keyword).
REC_OPTION = "rec"

_TTL = Option("ttl_s", "ttl", "expire after S seconds", flag="--ttl", metavar="S")


class Op:
    """One operation of the wire protocol (a row; not changed once the table is built)."""

    __slots__ = ("allowed_options", "arity", "cli", "method", "name", "options", "params", "rec", "reply", "route",
                 "summary", "writes")

    def __init__(
        self,
        name: str,
        params: tuple[Param, ...],
        summary: str,
        reply: str,  # what a success carries, for the protocol reference (Markdown)
        writes: bool = False,
        route: Route = Route.READ,
        method: str = "",  # the client method; the op's name when empty
        options: tuple[Option, ...] = (),
        cli: bool = True,  # a COMMAND of the memlookup CLI
        rec: bool = False,  # takes the option REC_OPTION: the reply carries the records the write left
    ) -> None:
        self.name, self.params, self.summary, self.reply = name, params, summary, reply
        self.writes, self.route, self.options, self.cli, self.rec = writes, route, options, cli, rec
        self.method = method or name
        self.allowed_options: frozenset[str] = COMMON_OPTIONS | {o.name for o in options} | (
            {REC_OPTION} if rec else set())
        #: Positional parameters on the wire (a slot, not a property: the decoder reads it per request).
        self.arity = len(params)

    def __repr__(self) -> str:
        return f"Op({self.name!r})"


_KEY = Param("key", Kind.KEY, metavar="KEY")

OPS_TABLE: tuple[Op, ...] = (
    Op("ping", (), "check that the node answers", 'str `"PONG"`', route=Route.EVERY_NODE),
    Op("get", (_KEY,), "the value of KEY", "str: the value; **nil** if missing or expired"),
    Op("set", (Param("key", Kind.KEY, stored=True, metavar="KEY"),
               Param("value", Kind.VALUE, stored=True, metavar="VALUE", stdin=True,
                     help="the value; left out or -: standard input, to its end")),
       "store VALUE under KEY", "bool: `true` stored; `false` not stored because `nx`/`xx` failed",
       writes=True, route=Route.WRITE,
       options=(_TTL, Option("nx", "flag", "only if KEY does not exist", excludes="xx"),
                Option("xx", "flag", "only if KEY exists", excludes="nx")), rec=True),
    Op("del", (_KEY,), "remove KEY", "bool: `true` if the key existed (and was not expired)",
       writes=True, route=Route.DELETE, method="delete", rec=True),
    Op("exists", (_KEY,), "whether KEY exists", "bool"),
    Op("mget", (Param("keys", Kind.KEYS, metavar="KEY"),), "the values of several keys",
       "array of the same length and order; each element str or nil", route=Route.READ_MANY),
    Op("mset", (Param("pairs", Kind.PAIRS, stored=True, metavar="KEY VALUE"),),
       "store several pairs at once: all or none", "bool, always `true`",
       writes=True, route=Route.WRITE_MANY, options=(_TTL,), rec=True),
    Op("keys", (Param("pattern", Kind.PATTERN, metavar="PATTERN", default="*",
                      help="a glob: *, ?, [abc], [!abc] (default: *, every key)"),
                Param("cursor", Kind.CURSOR, cli=False),
                Param("count", Kind.COUNT, flag="--count", metavar="N",
                      help="keys to ask for per page, a hint (default: the client library's)")),
       "the keys matching a glob PATTERN, a page at a time", "array `[next_cursor (int), [key, ...]]`",
       route=Route.EVERY_NODE, method="scan"),
    Op("ttl", (_KEY,), "seconds KEY has left",
       "int `-2` missing/expired; int `-1` no expiry; otherwise **float64** seconds left, ≥ 0.0"),
    Op("incr", (Param("key", Kind.KEY, stored=True, metavar="KEY"),
                Param("delta", Kind.INT, stored=True, metavar="DELTA", default=1, help="a whole number (default: 1)")),
       "add DELTA to the integer at KEY", "int: the new value", writes=True, route=Route.DECIDE, rec=True),
    Op("cas", (Param("key", Kind.KEY, stored=True, metavar="KEY"), Param("expected", Kind.VALUE, metavar="EXPECTED"),
               Param("value", Kind.VALUE, stored=True, metavar="NEW")),
       "set KEY to NEW only if its value is EXPECTED", "bool: `true` swapped; `false` nothing changed",
       writes=True, route=Route.DECIDE, options=(_TTL,), rec=True),
    Op("stats", (), "the node's counters", "map (section 9.8)", route=Route.EVERY_NODE),
    Op("batch", (Param("requests", Kind.REQUESTS),), "several requests in one message, each answered alone",
       "array of replies, one per request, in order", route=Route.NONE, cli=False),
    Op("members", (), "this node's view of the cluster's membership (docs/CLUSTER.md)",
       'map `{"epoch": int, "replicas": int, "dynamic": bool, "members": {name: entry}}` (section 9.11)',
       route=Route.NONE, cli=False),
    Op("announce", (Param("entries", Kind.ENTRIES),), "merge member entries into this node's view, newest wins",
       "map name → bool: whether that entry was newer and applied (section 9.11)", route=Route.NONE, cli=False),
    Op("leave", (), "move this node's keys to the other members and leave the cluster (docs/CLUSTER.md)",
       'map `{"state": "leaving" or "left", "pushed": int, "error": str or nil}` (section 9.11)',
       route=Route.NONE, cli=False),
    # Versioned ops, for cluster clients and nodes (docs/PROTOCOL.md, "Versions"): not commands.
    Op("getv", (Param("keys", Kind.KEYS),), "each key's record, a tombstone's included",
       "array of the same length and order; each element a record, or nil if the node holds nothing for the key",
       route=Route.NONE, cli=False),
    Op("putv", (Param("records", Kind.RECORDS, stored=True),), "apply each record whose version is newer",
       "array of bool, one per record: `true` applied, `false` the node holds the same or a newer version",
       writes=True, route=Route.NONE, cli=False),
    Op("scanv", (Param("cursor", Kind.CURSOR), Param("count", Kind.COUNT)),
       "every record, tombstones included, a page at a time", "array `[next_cursor (int), [record, ...]]`",
       route=Route.NONE, cli=False),
    Op("node", (), "who this node is", 'map `{"name", "address", "state", "epoch", "up_since_ms", '
       '"loaded_until_ms"}`', route=Route.NONE, cli=False),
)

#: Every op by its wire name.
OPS: dict[str, Op] = {op.name: op for op in OPS_TABLE}

#: The ops that change the store; a retry of one is deduplicated by its rid.
WRITE_OPS = frozenset(op.name for op in OPS_TABLE if op.writes)
