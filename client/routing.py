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

from client.commands import SET, TTL
from client.requests import Request
from common.address import expand_nodes
from common.errors import InvalidRequestError, NodeUnavailableError
from common.limits import MAX_BATCH_KEYS
from common.membership import Rings
from common.ops import Kind, Route
from common.placement import Placement

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
        leaving: nodes being removed: not members, but ``delete`` reaches them.
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
        """The nodes a write of ``key`` goes to, first owner first (while a node
        joins or leaves, its owners on both rings, the new ring's first)."""
        return self.rings.write_owners(key)

    def read_owners(self, key: str) -> list[str]:
        """The nodes ``key`` is read from, first owner first (while a node joins
        or leaves, its owners on both rings, the old ring's first)."""
        return self.rings.read_owners(key)

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
        """The nodes being removed: not members, but ``delete`` reaches them."""
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
    route = op.route
    if route is Route.WRITE and request.options and any(
            request.options.get(option.name) for option in op.options if option.kind == "flag"):
        route = Route.DECIDE  # a conditional write (set nx/xx)
    if route is Route.EVERY_NODE:
        return EVERY_NODE[op.name](membership, request)
    return _PLANS[route](membership, request)


def _none_answered(key: str, failure: NodeUnavailableError | None) -> NodeUnavailableError:
    detail = f": {failure}" if failure else ""
    return NodeUnavailableError(f"no owner of key {key!r} answered{detail}", node=failure.node if failure else "")


def _read(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """READ: the first live owner; on a timeout, or a miss, the next one (not one known to be down)."""
    key = request.args[0]
    missing = request.command.missing
    failure: NodeUnavailableError | None = None
    answered = False
    for name in membership.live_first(membership.read_owners(key)):
        if answered and membership.is_dead(name):
            break  # a miss is not worth a timeout on a node known to be down
        got = (yield {name: [request]})[name]
        if isinstance(got, NodeUnavailableError):
            failure = got
            continue
        if got[0] != missing:
            return got[0]
        answered = True
    if answered:
        return missing
    raise _none_answered(key, failure)


def _write(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """WRITE: every live owner, one after another; True when all that answered (at least one) stored it."""
    key = request.args[0]
    results = []
    failure: NodeUnavailableError | None = None
    for name in membership.live(membership.owners(key)):
        got = (yield {name: [request]})[name]
        if isinstance(got, NodeUnavailableError):
            failure = got
        else:
            results.append(got[0])
    if not results:
        raise _none_answered(key, failure)
    return all(results)


def _decide(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """DECIDE: the first live owner decides; its outcome is copied to the other live owners as a plain set.

    An op that stores one of its arguments (set's and cas's VALUE) copies it
    when the outcome is True, with the request's TTL; one that computes the
    value (incr) copies its result, with the key's remaining TTL, asked of
    the deciding owner right after.
    """
    key = request.args[0]
    op = request.command.op
    stored = next((i for i, p in enumerate(op.params) if p.kind is Kind.VALUE and p.stored), None)
    ask = [request]
    if stored is None and membership.replicas > 1:
        ask.append(TTL.request((key,), {}))
    names = membership.live_first(membership.owners(key))
    failure: NodeUnavailableError | None = None
    for index, name in enumerate(names):
        got = (yield {name: ask})[name]
        if isinstance(got, NodeUnavailableError):
            failure = got
            continue
        outcome = got[0]
        if stored is not None:
            ttl_s = (request.options or {}).get("ttl_s")
            copy = SET.request((key, request.args[stored]), {"ttl_s": ttl_s}) if outcome is True else None
        else:
            remaining = got[1] if len(got) > 1 else -1
            copy = SET.request((key, str(outcome)), {"ttl_s": remaining if remaining > 0 else None})
        if copy is not None:
            for other in names[index + 1:]:
                if not membership.is_dead(other):
                    yield {other: [copy]}  # one that fails is marked dead; rebalance restores the copy
        return outcome
    raise _none_answered(key, failure)


def _delete(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """DELETE: every live node, owner or not, at once; True if any had the key; at least one owner must answer."""
    key = request.args[0]
    answers = yield {name: [request] for name in membership.live(membership.everyone)}
    if all(isinstance(answers.get(name), NodeUnavailableError) or name not in answers
           for name in membership.owners(key)):
        failure = next((a for a in answers.values() if isinstance(a, NodeUnavailableError)), None)
        raise _none_answered(key, failure)
    return any(got[0] is True for got in answers.values() if not isinstance(got, NodeUnavailableError))


def _chunks(request: Request[Any], items: list[Any]) -> list[Request[Any]]:
    """``request``'s op for ``items`` (keys, or pairs), at most MAX_BATCH_KEYS a request."""
    make = dict if isinstance(request.args[0], dict) else list
    return [Request(request.command, [make(items[start:start + MAX_BATCH_KEYS])], request.options)
            for start in range(0, len(items), MAX_BATCH_KEYS)]


def _read_many(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """READ_MANY: keys split by first live owner, all nodes at once; misses and
    failures asked of the next owner in another round."""
    keys: list[str] = request.args[0]
    values: list[Any] = [None] * len(keys)
    # Owners still to ask for each key, live ones first.
    pending = {index: membership.live_first(membership.read_owners(key)) for index, key in enumerate(keys)}
    answered: set[int] = set()
    failure: NodeUnavailableError | None = None
    while pending:
        by_node: dict[str, list[int]] = {}
        for index, candidates in pending.items():
            by_node.setdefault(candidates.pop(0), []).append(index)
        answers = yield {name: _chunks(request, [keys[i] for i in indexes]) for name, indexes in by_node.items()}
        for name, got in answers.items():
            indexes = by_node[name]
            if isinstance(got, NodeUnavailableError):
                failure = got
                found: list[Any] = [None] * len(indexes)
            else:
                answered.update(indexes)
                found = [value for chunk in got for value in chunk]
            for index, value in zip(indexes, found, strict=True):
                if value is not None:
                    values[index] = value
                    del pending[index]
                    continue
                if index in answered:  # a miss: ask the other live owners only
                    pending[index] = [n for n in pending[index] if not membership.is_dead(n)]
                if not pending[index]:
                    del pending[index]
                    if index not in answered:
                        raise _none_answered(keys[index], failure)
    return values


def _write_many(membership: Membership, request: Request[Any]) -> Plan[Any]:
    """WRITE_MANY: each pair to each of its live owners, all nodes at once; every
    key must be acknowledged by at least one owner."""
    pairs: dict[str, str] = request.args[0]
    by_node: dict[str, dict[str, str]] = {}
    for key, value in pairs.items():
        for name in membership.live(membership.owners(key)):
            by_node.setdefault(name, {})[key] = value
    if not by_node:
        return None
    answers = yield {name: _chunks(request, list(share.items())) for name, share in by_node.items()}
    failed = {name for name, got in answers.items() if isinstance(got, NodeUnavailableError)}
    for key in pairs if failed else ():
        if all(name in failed for name, share in by_node.items() if key in share):
            failure = answers[next(iter(failed))]
            raise _none_answered(key, failure if isinstance(failure, NodeUnavailableError) else None)
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
    Route.DECIDE: _decide,
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
