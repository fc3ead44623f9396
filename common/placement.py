"""Which nodes own a key: a ketama consistent-hash ring with R distinct owners.

The ring comes from uhashring (ketama-compatible, like libmemcached and
twemproxy pools): every node gets 160 points on a 32-bit circle, and a key's
owners are the first R distinct nodes clockwise from the key's own point.
Adding a node to n others takes over about 1/(n+1) of every node's share, so
about that fraction of the stored copies has to move; removing one moves only
the copies it held.

Nodes are named by their member names (a node's ``--node-name`` in a
cluster that keeps its membership, ``host:port`` as written otherwise), so
every client and server that lists the same members, in any order, places
keys alike. It lives in common/ because servers place keys too, when a node
joins or leaves (server/membership.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from uhashring import HashRing


class Placement:
    """Maps keys to their owner nodes.

    Args:
        nodes: the member names; order does not matter.
        replicas: owners per key; more than the number of nodes means every node.
    """

    def __init__(self, nodes: Iterable[str], replicas: int) -> None:
        self.nodes = sorted(set(nodes))
        if not self.nodes:
            raise ValueError("a cluster needs at least one node")
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {replicas}")
        self.replicas = min(replicas, len(self.nodes))
        ring = HashRing(self.nodes, hash_fn="ketama")
        points = ring.get_points()
        self._hash = ring.hashi
        self._positions = [position for position, _ in points]
        self._names = [name for _, name in points]

    def owners(self, key: str) -> list[str]:
        """The ``replicas`` distinct nodes that hold ``key``, first owner first."""
        names, count, want = self._names, len(self._names), self.replicas
        index = bisect.bisect(self._positions, self._hash(key))
        found: list[str] = []
        for step in range(count):
            name = names[(index + step) % count]
            if name not in found:
                found.append(name)
                if len(found) == want:
                    break
        return found
