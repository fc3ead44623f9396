"""How a cluster client sends each operation, with no I/O: membership, liveness, one plan per route.

A *plan* is a generator: it yields a step -- for each node, the requests to
send it, in order -- and gets back, for each node, the list of its results or
the :class:`NodeUnavailableError` it raised; at the end it returns what the
method returns, or raises. It never touches a socket, so the same plans run
under :class:`client.ClusterClient` (a step's nodes in parallel on a thread
pool) and :class:`client.AsyncClusterClient` (``asyncio.gather``). The driver
marks a node dead when it does not answer and alive when it does; any other
error (a refusal, a bad argument, a :class:`TransportError`) ends the plan.

Which plan an operation gets is its row's :class:`~common.ops.Route`
(:mod:`common.ops`); the rules are documented in ``ClusterClient``'s
docstring and docs/CLUSTER.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

from client.records import GETV, PUTV, REPAIR, WITH_RECORDS, Record, newest, stale, value, with_records
from client.requests import Request
from common.address import expand_nodes
from common.errors import InvalidRequestError, NodeUnavailableError
from common.limits import MAX_BATCH_KEYS
from common.membership import Rings
from common.ops import REC_OPTION, Route
from common.placement import Placement
from common.protocol import Status

T = TypeVar("T")

#: One step: for each node, the requests to send it, one after another.
Step = dict[str, list[Request[Any]]]
#: What a step brought back: for each node, its results in order, or why it did not answer.
Answer = dict[str, "list[Any] | NodeUnavailableError"]
#: A plan: yields steps, is sent their answers, returns the method's result.
Plan = Generator[Step, Answer, T]

#: How long a node that did not answer is skipped before it is tried again.
DEAD_FOR_S = 5.0


class Membership:
    """The members, where each key lives (:class:`common.membership.Rings`), and who is down.

    Args:
        nodes: the members (a list, or a comma-separated string; a name with
            several addresses counts as all of them).
        replicas: copies of each key.
        default_port: for addresses without one.
        leaving: nodes being removed: not members, but ``rebalance`` drains them.
        dead_for_s: how long a node that did not answer is skipped.

    A membership kept by the nodes (client/membership.py) follows from
    this one by :meth:`succeeded_by`: its members are named by node names,
    on two rings while a node joins or leaves.
    """

    def __init__(self, nodes: str | Iterable[str], replicas: int, default_port: int,
                 leaving: str | Iterable[str], dead_for_s: float) -> None:
        names = expand_nodes(nodes, default_port)
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {replicas}")
        leaving = [n for n in (expand_nodes(leaving, default_port) if leaving else []) if n not in names]
        self._setup(Rings.of(names, replicas), leaving, dead_for_s, {})

    def succeeded_by(self, rings: Rings) -> Membership:
        """The membership of ``rings`` (a kept membership's new view), knowing who is down as this one does."""
        membership = Membership.__new__(Membership)
        membership._setup(rings, [], self.dead_for_s, self._dead_until)
        return membership

    def _setup(self, rings: Rings, leaving: list[str], dead_for_s: float, dead_until: dict[str, float]) -> None:
        self.rings = rings
        self.placement = rings.write
        self.replicas = self.placement.replicas
        self.dead_for_s = dead_for_s
        self.leaving = leaving
        #: Members, then the leaving nodes.
        self.everyone = [*rings.nodes, *leaving]
        self._dead_until = dead_until
        for name in self.everyone:
            dead_until.setdefault(name, 0.0)

    @property
    def nodes(self) -> list[str]:
        """Every member, by name (not the leaving nodes)."""
        return list(self.rings.nodes)

    def owners(self, key: str) -> list[str]:
        """The nodes that hold ``key``, first owner first (while a node joins or
        leaves, its owners on both rings, the new ring's first: writes reach
        the node that will hold it, reads the nodes that still do)."""
        return self.rings.owners(key)

    def is_dead(self, name: str) -> bool:
        """True while ``name`` is skipped after failing to answer."""
        return self._dead_until.get(name, 0.0) > time.monotonic()

    def failed(self, name: str) -> None:
        """``name`` did not answer: skip it for ``dead_for_s``."""
        self._dead_until[name] = time.monotonic() + self.dead_for_s

    def answered(self, name: str) -> None:
        self._dead_until[name] = 0.0

    def live_first(self, names: list[str]) -> list[str]:
        """``names`` with those marked dead moved to the end (tried only if all else fails)."""
        now = time.monotonic()
        live = [n for n in names if self._dead_until.get(n, 0.0) <= now]
        return live + [n for n in names if n not in live] if len(live) < len(names) else names

    def live(self, names: list[str]) -> list[str]:
        """The names not marked dead, or all of them when every one is."""
        now = time.monotonic()
        live = [n for n in names if self._dead_until.get(n, 0.0) <= now]
        return live or names


class MembershipView:
    """What a cluster client tells about its membership (both :class:`client.ClusterClient`
    and :class:`client.AsyncClusterClient`); ``_membership`` is theirs."""

    _membership: Membership

    @property
    def placement(self) -> Placement:
        """The write ring: where new writes of each key go."""
        return self._membership.placement

    @property
    def replicas(self) -> int:
        """Copies of each key (R)."""
        return self._membership.replicas

    @property
    def dead_for_s(self) -> float:
        return self._membership.dead_for_s

    @property
    def leaving(self) -> list[str]:
        """The nodes being removed: not members, but ``rebalance`` drains them."""
        return self._membership.leaving

    @property
    def nodes(self) -> list[str]:
        """Every member, by name (not the leaving nodes)."""
        return self._membership.nodes

    def owners(self, key: str) -> list[str]:
        """The nodes a write of ``key`` goes to, first owner first."""
        return self._membership.owners(key)

    @property
    def changing(self) -> bool:
        """True while a node joins or leaves a membership kept by the nodes: a key's
        owners are then its owners on both rings (docs/CLUSTER.md)."""
        return self._membership.rings.changing

    def is_dead(self, name: str) -> bool:
        """True while ``name`` is skipped after failing to answer."""
        return self._membership.is_dead(name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.nodes!r}, replicas={self.replicas})"


def plan(membership: Membership, request: Request[T]) -> Plan[T]:
    """The plan that sends ``request`` through the cluster, by its op's route."""
    op = request.command.op
    if op.route is Route.EVERY_NODE:
        return EVERY_NODE[op.name](membership, request)
    return _PLANS[op.route](membership, request)


def _none_answered(key: str, failure: NodeUnavailableError | None) -> NodeUnavailableError:
    detail = f": {failure}" if failure else ""
    return NodeUnavailableError(f"no owner of key {key!r} answered{detail}", node=failure.node if failure else "")


def _split(items: list[Any]) -> list[list[Any]]:
    """``items`` in chunks of at most MAX_BATCH_KEYS (one request each)."""
    return [items[start:start + MAX_BATCH_KEYS] for start in range(0, len(items), MAX_BATCH_KEYS)]


#: What a READ answers from the newest record of a key that exists; an op not
#: here (ttl) is also sent itself, and the answer of the node holding that record is taken.
_FROM_RECORD: dict[str, Callable[[Record], Any]] = {"get": value, "exists": lambda record: True}


def _repairs(latest: Record, held: dict[str, Record | None]) -> Step:
    """Read-repair: the newest record to each owner that answered with an older one."""
    return {name: [Request(REPAIR, [[latest]], None)] for name, record in held.items() if stale(record, latest)}


def _read(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """READ: ``getv`` to every live owner at once; the answer of the newest record
    (a tombstone is a miss); owners holding an older one are repaired."""
    key = request.args[0]
    ask: list[Request[Any]] = [Request(GETV, [[key]], None)]
    from_record = _FROM_RECORD.get(request.command.name)
    if from_record is None:
        ask.append(request)
    answers = yield {name: ask for name in membership.live(membership.owners(key))}
    held: dict[str, Record | None] = {}
    failure: NodeUnavailableError | None = None
    for name, got in answers.items():
        if isinstance(got, NodeUnavailableError):
            failure = got
        else:
            held[name] = got[0][0]
    if not held:
        raise _none_answered(key, failure)
    latest = newest(held.values())
    if latest is None:
        return request.command.missing
    repairs = _repairs(latest, held)
    if repairs:
        yield repairs
    if latest[1] is None:
        return request.command.missing
    if from_record is not None:
        return from_record(latest)
    holder = next(name for name, record in held.items() if record is latest)
    return answers[holder][1]  # type: ignore[index]  # holder answered: a list


def _write(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """WRITE, DECIDE, DELETE: the first live owner applies the write (and decides a
    condition) and returns the record it left, which is copied to the other live
    owners with ``putv`` (newer wins there). A ``del`` that deleted nothing
    leaves nothing to copy: :func:`_delete` gave its owner the newest record the
    owners held first, so a value another owner holds is one written after that
    (by an owner applying writes while this one did not answer)."""
    key = request.args[0]
    applying = with_records(request)
    names = membership.live_first(membership.owners(key))
    failure: NodeUnavailableError | None = None
    for index, name in enumerate(names):
        got = (yield {name: [applying]})[name]
        if isinstance(got, NodeUnavailableError):
            failure = got
            continue
        outcome, records = got[0]
        others = [other for other in names[index + 1:] if not membership.is_dead(other)]
        copies = [record for record in records if record is not None]
        deleted_nothing = request.command.op.route is Route.DELETE and not outcome
        if others and copies and not deleted_nothing:
            yield {other: [Request(PUTV, [copies], None)] for other in others}
        return request.command.value(Status.OK, outcome)
    raise _none_answered(key, failure)


def _delete(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """DELETE: first what every live owner holds (``getv``), and the newest record to
    those holding an older one, so that the owner applying the delete holds the
    newest record the owners know of: ``del`` answers whether the key existed in
    the cluster, not at an owner that missed a write or a delete while it was
    away or not answering. Then the write rule (:func:`_write`)."""
    key = request.args[0]
    answers = yield {name: [Request(GETV, [[key]], None)] for name in membership.live(membership.owners(key))}
    held = {name: got[0][0] for name, got in answers.items() if not isinstance(got, NodeUnavailableError)}
    latest = newest(held.values())
    if latest is not None:
        repairs = _repairs(latest, held)
        if repairs:
            yield repairs
    return (yield from _write(membership, request))


def _read_many(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """READ_MANY: ``getv`` of each key to each of its live owners, all nodes at once;
    each key's newest record answers; stale owners are repaired in one more step."""
    keys: list[str] = request.args[0]
    by_node: dict[str, list[str]] = {}
    for key in dict.fromkeys(keys):
        for name in membership.live(membership.owners(key)):
            by_node.setdefault(name, []).append(key)
    answers = yield {name: [Request(GETV, [chunk], None) for chunk in _split(share)]
                     for name, share in by_node.items()}
    held: dict[str, dict[str, Record | None]] = {}  # key -> node -> its record
    failure: NodeUnavailableError | None = None
    for name, got in answers.items():
        if isinstance(got, NodeUnavailableError):
            failure = got
            continue
        for key, record in zip(by_node[name], [record for chunk in got for record in chunk], strict=True):
            held.setdefault(key, {})[name] = record
    latest: dict[str, Record | None] = {}
    repairs: dict[str, list[Record]] = {}
    for key in dict.fromkeys(keys):
        if key not in held:
            raise _none_answered(key, failure)
        record = latest[key] = newest(held[key].values())
        if record is not None:
            for name, step in _repairs(record, held[key]).items():
                repairs.setdefault(name, []).extend(step[0].args[0])
    if repairs:
        yield {name: [Request(REPAIR, [chunk], None) for chunk in _split(records)] for name, records in repairs.items()}
    return [value(latest[key]) for key in keys]


def _write_many(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """WRITE_MANY: the pairs split by first live owner, all nodes at once, each
    applying its share with ``rec`` (a node that does not answer: its pairs go
    to their next owner); then each record is copied to the key's other live owners."""
    pairs: dict[str, str] = request.args[0]
    options = {**(request.options or {}), REC_OPTION: True}
    candidates = {key: membership.live_first(membership.owners(key)) for key in pairs}
    applied: dict[str, tuple[str, Record | None]] = {}  # key -> (the node that applied it, its record)
    pending = list(pairs)
    while pending:
        by_node: dict[str, list[str]] = {}
        for key in pending:
            by_node.setdefault(candidates[key][0], []).append(key)
        answers = yield {name: [Request(WITH_RECORDS["mset"], [{key: pairs[key] for key in chunk}], options)
                                for chunk in _split(share)] for name, share in by_node.items()}
        pending = []
        for name, got in answers.items():
            if isinstance(got, NodeUnavailableError):
                for key in by_node[name]:
                    candidates[key].pop(0)
                    if not candidates[key]:
                        raise _none_answered(key, got)
                    pending.append(key)
                continue
            for key, record in zip(by_node[name], [record for _, records in got for record in records], strict=True):
                applied[key] = (name, record)
    copies: dict[str, list[Record]] = {}
    for key, (name, record) in applied.items():
        for other in membership.owners(key):
            if record is not None and other != name and not membership.is_dead(other):
                copies.setdefault(other, []).append(record)
    if copies:
        yield {name: [Request(PUTV, [chunk], None) for chunk in _split(records)] for name, records in copies.items()}
    return None


def health(membership: Membership, request: Request[Any]) -> Plan[dict[str, bool]]:
    """Ping every member at once: name -> answered."""
    answers = yield {name: [request] for name in membership.nodes}
    return {name: not isinstance(got, NodeUnavailableError) and got[0] is True for name, got in answers.items()}


def _ping(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """True when every member answers; else NodeUnavailableError naming those that did not."""
    up = yield from health(membership, request)
    down = [name for name, answered in up.items() if not answered]
    if down:
        raise NodeUnavailableError(f"no reply from {', '.join(down)}", node=",".join(down))
    return True


def _stats(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """Each member's stats, and their totals (over the members that answered)."""
    answers = yield {name: [request] for name in membership.nodes}
    per_node: dict[str, Any] = {}
    total: dict[str, Any] = {"nodes": len(answers), "nodes_up": 0, "keys": 0, "memory_bytes": 0,
                             "rss_bytes": 0, "ops": {}, "errors": {}}
    for name, got in answers.items():
        if isinstance(got, NodeUnavailableError):
            per_node[name] = {"error": str(got)}
            continue
        stats = per_node[name] = got[0]
        total["nodes_up"] += 1
        for figure in ("keys", "memory_bytes", "rss_bytes"):
            total[figure] += int(stats.get(figure, 0))
        for section in ("ops", "errors"):
            for op, count in stats.get(section, {}).items():
                total[section][op] = total[section].get(op, 0) + count
    return {"replicas": membership.replicas, "total": total, "nodes": per_node}


def _scan(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """One page of the members' keys, member after member.

    The cluster's cursor is ``member's cursor * members + member's index``:
    0 starts at the first member, and 0 again means every member was
    scanned. A member marked dead, or that does not answer, is skipped (its
    keys have copies elsewhere).
    """
    pattern, cursor, count = request.args
    members = membership.nodes
    if cursor < 0:
        raise InvalidRequestError(f"cursor {cursor} was not returned by this cluster client's scan")
    index, node_cursor = cursor % len(members), cursor // len(members)
    while index < len(members):
        name = members[index]
        if not membership.is_dead(name):
            got = (yield {name: [Request(request.command, [pattern, node_cursor, count], None)]})[name]
            if not isinstance(got, NodeUnavailableError):
                node_next, keys = got[0]
                if node_next:
                    return node_next * len(members) + index, keys
                return (index + 1 if index + 1 < len(members) else 0), keys
        index, node_cursor = index + 1, 0
    return 0, []


_PLANS: dict[Route, Callable[[Membership, Request[Any]], Plan[Any]]] = {
    Route.READ: _read,
    Route.WRITE: _write,
    Route.DECIDE: _write,
    Route.DELETE: _delete,
    Route.READ_MANY: _read_many,
    Route.WRITE_MANY: _write_many,
}

#: EVERY_NODE ops each combine the members' answers their own way.
EVERY_NODE: dict[str, Callable[[Membership, Request[Any]], Plan[Any]]] = {
    "ping": _ping,
    "stats": _stats,
    "keys": _scan,
}
