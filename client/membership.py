"""A cluster client's view of a membership kept by the nodes: asked for, merged, turned into rings.

Nodes started with ``--join`` keep the cluster's membership (common/membership.py,
server/membership.py) and answer it to ``members``. A cluster client asks one
of the nodes it knows about every :data:`~common.membership.REFRESH_INTERVAL_S`
while it is used, merges the answer into its own view (newest entry wins) and,
when the epoch changed, places keys on the new rings. Servers without ``--join``
(or too old to know ``members``) make a static cluster: the nodes the client
was given, placed by their addresses, as before membership existed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from client.requests import Command
from client.routing import Membership, Plan
from common.errors import NodeUnavailableError
from common.membership import LEFT, REFRESH_INTERVAL_S, Entry, Rings, epoch, parse_entries
from common.ops import OPS

if TYPE_CHECKING:
    from client.client import Client

C = TypeVar("C")

#: How often :func:`leave` asks whether the node has left.
LEAVE_POLL_S = 0.2

#: The internal ops nodes and cluster clients send each other (route NONE: no client method).
MEMBERS: Command[dict[str, Any]] = Command(OPS["members"])
ANNOUNCE: Command[dict[str, bool]] = Command(OPS["announce"])
LEAVE: Command[dict[str, Any]] = Command(OPS["leave"])
NODE: Command[dict[str, Any]] = Command(OPS["node"])
SCANV: Command[list[Any]] = Command(OPS["scanv"])
PUTV: Command[list[bool]] = Command(OPS["putv"])


class KeptMembership:
    """What a cluster client knows of a membership kept by the nodes, and when to ask again.

    Sans-I/O, like :mod:`client.routing`: :meth:`refresh` is a plan that
    both cluster clients play. The first refresh (before the first call)
    tells a kept membership from a static cluster; a static one is never
    asked again.

    Args:
        seeds: the nodes the client was given (a kept membership's members
            are then asked; the seeds only while none answers).
    """

    def __init__(self, seeds: list[str]) -> None:
        self._seeds = seeds
        self._entries: dict[str, Entry] = {}
        self._epoch: int | None = None
        #: None until a node answered; then whether the membership is kept by the nodes.
        self.dynamic: bool | None = None
        self._next_s = 0.0
        self._turn = 0

    def due(self) -> bool:
        """Whether the next call should refresh first."""
        return self.dynamic is not False and time.monotonic() >= self._next_s

    def addresses(self) -> dict[str, str]:
        """Every member that has not left: name -> address."""
        return {name: entry.address for name, entry in self._entries.items() if entry.state != LEFT}

    def refresh(self, membership: Membership) -> Plan[Membership | None]:
        """Ask one node for its view and merge it; the membership to use from now on, or None to keep it.

        The node asked takes turns among the live members (all the seeds
        are tried until one answers the first time). A static cluster
        answers ``dynamic: false``, a server too old to know ``members``
        refuses it: either way the client keeps the static membership.
        """
        self._next_s = time.monotonic() + REFRESH_INTERVAL_S
        members = membership.live([name for name in self.addresses() if name in membership.everyone])
        if members:
            self._turn += 1
            candidates = [members[self._turn % len(members)]]
        else:
            candidates = membership.live_first([seed for seed in self._seeds if seed in membership.everyone]
                                               or membership.everyone)
        for name in candidates:
            got = (yield {name: [MEMBERS.request((), {})]})[name]
            if isinstance(got, NodeUnavailableError):
                continue
            return self._merge(got[0], membership)
        return None

    def static(self) -> None:
        """The nodes do not keep a membership (they refused ``members``): never ask again."""
        self.dynamic = False

    def _merge(self, reply: Any, membership: Membership) -> Membership | None:
        if not isinstance(reply, dict) or not reply.get("dynamic"):
            self.dynamic = False
            return None
        self.dynamic = True
        try:
            theirs = parse_entries(reply.get("members"), time.time_ns() // 1_000_000)
            replicas = int(reply["replicas"])
        except (KeyError, TypeError, ValueError):
            return None  # a reply this client cannot use: the next refresh asks another node
        for name, entry in theirs.items():
            held = self._entries.get(name)
            if held is None or entry.version > held.version:
                self._entries[name] = entry
        now = epoch(self._entries)
        if now == self._epoch:
            return None
        try:
            rings = Rings(self._entries, replicas)
        except ValueError:  # every member has left
            return None
        self._epoch = now
        return membership.succeeded_by(rings)


def adopt(kept: KeptMembership, update: Membership | None, membership: Membership, clients: dict[str, C],
          make: Callable[[str], C]) -> tuple[Membership, dict[str, C], list[C]]:
    """After a refresh of a kept membership: the membership to use (``update``, or ``membership`` when
    None), a client for every member at its current address, and the clients these replace.

    The clients come in a new dict, so calls under way keep the one they
    hold; the replaced ones are for the caller to close when it closes. A
    member whose address does not resolve gets none and is marked down.
    """
    membership = update or membership
    adopted = dict(clients)
    for name, address in kept.addresses().items():
        client = adopted.get(name)
        if client is not None and getattr(client, "node", None) == address:
            continue
        try:
            adopted[name] = make(address)
        except ValueError:  # it does not resolve (a stopped container leaves the DNS): down
            adopted.pop(name, None)
            membership.failed(name)
    return membership, adopted, [client for name, client in clients.items() if adopted.get(name) is not client]


def member_client(clients: dict[str, C], name: str) -> C:
    """The client of member ``name``.

    Raises:
        NodeUnavailableError: its address did not resolve when it was last looked up.
    """
    client = clients.get(name)
    if client is None:
        raise NodeUnavailableError(f"member {name}'s address does not resolve", node=name)
    return client


def leave(node: str, timeout_s: float = 120.0, **options: Any) -> dict[str, Any]:
    """Make ``node`` leave its cluster, and wait until it has: its records are with their new owners.

    For a Kubernetes ``preStop`` hook (``memlookup NODE leave``), or before a
    node is removed for good. ``options`` are :class:`client.Client`'s.

    Returns:
        The node's last answer: ``{"state": "left", "pushed": records, "error": None}``.

    Raises:
        InvalidRequestError: the node keeps no membership (it runs without ``--join``).
        NodeUnavailableError: the node did not answer.
        TimeoutError: it had not left after ``timeout_s``; the answer's error says why.
    """
    from client.client import Client

    with Client(node, **options) as client:
        return wait_until_left(client, timeout_s)


def wait_until_left(client: Client, timeout_s: float) -> dict[str, Any]:
    """Ask ``client``'s node to leave, and ask again until it says ``left`` (see :func:`leave`).

    ``leave`` starts the node's leave procedure (server/membership_thread.py)
    once; asking again reports its progress, or retries an attempt that
    stopped. The node goes on answering requests meanwhile.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        answer = client._execute(LEAVE)
        if answer.get("state") == LEFT:
            return answer
        if time.monotonic() >= deadline:
            why = answer.get("error") or "still moving keys"
            raise TimeoutError(f"{client.node} has not left after {timeout_s} s: {why}")
        time.sleep(LEAVE_POLL_S)
