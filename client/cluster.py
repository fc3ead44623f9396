"""The multi-node client: keys sharded by consistent hashing, R copies each, failover."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import zmq

from client.client import Client
from client.commands import PING
from client.mapping import MappingSugar
from client.membership import KeptMembership, adopt, member_client
from client.pool import fork_lock
from client.requests import Command, Request
from client.routing import DEAD_FOR_S, Membership, MembershipView, Plan, Step, health, plan
from common.address import DEFAULT_PORT
from common.errors import InvalidRequestError, MemlookupError, NodeUnavailableError

if TYPE_CHECKING:
    from common.keys import KeySource

T = TypeVar("T")

__all__ = ["DEAD_FOR_S", "ClusterClient"]


class ClusterClient(MembershipView, MappingSugar):
    """Many memlookup nodes used as one table: sharded, replicated, failing over.

    Connecting::

        from client import ClusterClient

        with ClusterClient("10.0.0.1,10.0.0.2,10.0.0.3", replicas=2) as table:
            table.set("norway", "oslo")
            table.get("norway")            # 'oslo', even with one node down
            table.mset({"a": "1", "b": "2"})
            table.mget(["a", "b", "c"])     # ['1', '2', None]

    ``nodes`` is a list of node addresses or a comma-separated string; a
    hostname with several addresses (a Kubernetes headless Service) counts
    as all of them. Each member gets its own :class:`Client` and socket.
    Batches split by node run in parallel on a small thread pool, one
    thread per node. The methods are :class:`Client`'s
    (:class:`client.commands.Commands`); how each is sent is its
    operation's route in :mod:`common.ops`, played by :mod:`client.routing`
    (and the same rules hold for :class:`client.AsyncClusterClient`).

    Threads and processes:
        One ClusterClient may be shared by threads: each member's
        :class:`Client` lends every call a connection of its own. In a
        child after ``os.fork()`` it opens new connections, as
        :class:`Client` does, and starts its own worker threads (the
        parent's do not exist in the child).

    Placement:
        A key's owners are the first ``replicas`` distinct nodes on a ketama
        consistent-hash ring (see :mod:`common.placement`); every client
        listing the same members places keys the same way. With fewer nodes
        than ``replicas``, every node holds every key.

    Failure detection:
        Use short timeouts (``timeout_s=0.5, retries=1`` by default). A node
        that does not answer in time is marked dead for ``dead_for_s``
        seconds: calls skip it, then try it again. When every owner of a key
        is marked dead, they are all tried anyway. A member whose name does
        not resolve (a stopped container's leaves its network's DNS) is a
        node down like one that does not answer, failing at once; its name
        is looked up again whenever a connection to it opens, so a node
        recreated with a new address is found there.

    Versions (docs/CLUSTER.md, "Consistency"):
        Every write is applied by one node, which stamps the key with a
        version (its hybrid logical clock); a delete leaves a tombstone with
        its version. Owners keep whichever version of a key is newer, so
        copies, repairs and ``rebalance`` can be applied in any order. Every
        node must be a memlookup server that has the versioned operations
        (``getv``, ``putv``, ``scanv``, option ``rec``): an older one refuses
        them, and the call raises :class:`InvalidRequestError`.

    Writes (``set``, ``mset``, ``delete``, ``incr``, ``cas``; routes WRITE,
    WRITE_MANY, DELETE, DECIDE):
        The first live owner of the key applies the write -- and decides its
        condition (``nx``/``xx``, ``cas``'s expected value, ``incr``'s
        number) -- and answers the record it left; that record is copied to
        the other live owners (``putv``: applied only where it is newer).
        ``mset`` is split by first owner, the shares sent in parallel. If
        the first owner does not answer, the next live owner applies it. A
        write succeeds when one owner applied it; an owner that times out
        on the copy is marked dead (reads repair it later). If no owner
        answered, :class:`NodeUnavailableError` is raised and the write may
        or may not have been applied. A refusal (out of memory, say) is
        raised; owners asked before keep the write. ``mset`` is all-or-none
        on each node, not across nodes. ``delete`` goes to the key's owners
        only: first every live owner's record is asked for and the newest
        given to the owners holding an older one (as a read does), then the
        first owner deletes and its tombstone, which outvotes any older copy,
        is copied.

    Reads (``get``, ``exists``, ``ttl``, ``mget``; routes READ, READ_MANY):
        Every live owner is asked for its record at once (``getv``); the
        newest answers (a tombstone is a miss). Owners that answered with an
        older record, or none, are given the newest before the call returns
        (read-repair; a repair that fails does not fail the read). With R
        copies, any R-1 failed nodes hide nothing, and a node that comes
        back with old data (a cut link, a restart from its data directory)
        neither shows an older value nor brings a deleted key back: the
        other owner's newer record answers, and repairs it. A read that runs
        into a failure is slow (``timeout_s * (retries + 1)``), not wrong.

    Every node (``ping``, ``stats``, ``scan`` and ``keys``; route EVERY_NODE):
        ``ping`` is True when every member answers, and otherwise raises
        :class:`NodeUnavailableError` naming those that did not;
        :meth:`health` says which answered. ``stats`` is each member's stats
        and their totals. ``scan`` pages through the members one after
        another, skipping any marked dead or not answering (their keys have
        copies elsewhere); its cursor encodes the member and that member's
        cursor, so it is only good for the same member list. A key held by
        R nodes comes up to R times from ``scan``, and once from ``keys()``,
        which remembers what it returned.

    Error Handling:
        As :class:`Client`; :class:`NodeUnavailableError` means no owner of
        some key answered.

    Args:
        nodes: the members.
        replicas: copies of each key (R), on R distinct nodes.
        timeout_s: seconds to wait for each attempt on one node.
        retries: resends to one node before it is marked dead.
        dead_for_s: how long a dead node is skipped.
        context: a ZeroMQ context to share.
        leaving: nodes being removed from the cluster: not members (they own
            nothing), but ``rebalance`` drains them.
        server_key, client_key: CurveZMQ keys, as for :class:`Client`, used
            for every node (the nodes share one server key pair).
    """

    _scan_repeats_keys: ClassVar[bool] = True

    def __init__(
        self,
        nodes: str | Iterable[str],
        replicas: int = 2,
        timeout_s: float = 0.5,
        retries: int = 1,
        dead_for_s: float = DEAD_FOR_S,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        default_port: int = DEFAULT_PORT,
        leaving: str | Iterable[str] = (),
        server_key: KeySource | None = None,
        client_key: KeySource | None = None,
    ) -> None:
        self._membership = membership = Membership(nodes, replicas, default_port, leaving, dead_for_s)
        self._client_options: dict[str, Any] = {"timeout_s": timeout_s, "retries": retries, "context": context,
                                                "server_key": server_key, "client_key": client_key}
        self._clients = {name: Client(name, **self._client_options) for name in membership.everyone}
        self._kept = KeptMembership(membership.everyone)
        self._refreshing = threading.Lock()
        self._retired: list[Client] = []  # replaced when a member moved; closed with the others
        self._pool: ThreadPoolExecutor | None = None  # started on first use
        self._pid = os.getpid()

    # -- membership (more in MembershipView) -----------------------------------------

    def health(self) -> dict[str, bool]:
        """Ping every member at once: name -> answered."""
        if self._kept.due():
            self._refresh()
        return self._run(health(self._membership, PING.request((), {})))

    # -- sending -------------------------------------------------------------------

    def _execute(self, command: Command[T], *args: Any, **options: Any) -> T:
        if self._kept.due():
            self._refresh()
        return self._run(plan(self._membership, command.request(args, options)))

    def _refresh(self) -> None:
        """Ask for the membership kept by the nodes (client/membership.py); one thread at a time,
        the others go on with the membership as it is (but wait for the first answer)."""
        if not self._refreshing.acquire(blocking=self._kept.dynamic is None):
            return
        try:
            if not self._kept.due():  # another thread refreshed meanwhile
                return
            try:
                update = self._run(self._kept.refresh(self._membership))
            except InvalidRequestError:  # members refused: a server older than kept memberships
                self._kept.static()
                return
            except MemlookupError:  # the node asked failed otherwise: the next refresh asks another
                return
            if self._kept.dynamic:
                self._membership, self._clients, retired = adopt(
                    self._kept, update, self._membership, self._clients,
                    lambda address: Client(address, **self._client_options))
                self._retired += retired
        finally:
            self._refreshing.release()

    def _run(self, steps: Plan[T]) -> T:
        """Play a plan of :mod:`client.routing`: each step's nodes at once (see :meth:`on_each`)."""
        try:
            step = next(steps)
            while True:
                step = steps.send(self._answer(step))
        except StopIteration as done:
            result: T = done.value  # the plan's return value (typeshed types it Any)
            return result
        finally:
            steps.close()

    def _answer(self, step: Step) -> dict[str, list[Any] | NodeUnavailableError]:
        return self.on_each({name: _sender(requests) for name, requests in step.items()})

    def _workers(self) -> ThreadPoolExecutor:
        """The thread pool: started on first use, after :meth:`close`, and in a
        forked child (the parent's threads do not exist there)."""
        pool = self._pool
        if pool is None or self._pid != os.getpid():
            with fork_lock():
                if self._pool is None or self._pid != os.getpid():
                    self._pool = ThreadPoolExecutor(max_workers=max(1, len(self._clients)),
                                                    thread_name_prefix="memlookup")
                    self._pid = os.getpid()
                pool = self._pool
        return pool

    def on(self, name: str, call: Callable[[Client], T]) -> T:
        """Run ``call(client)`` on one node; a timeout marks it dead, an answer alive."""
        try:
            result = call(member_client(self._clients, name))
        except NodeUnavailableError:
            self._membership.failed(name)
            raise
        self._membership.answered(name)
        return result

    def on_each(self, work: Mapping[str, Callable[[Client], T]]) -> dict[str, T | NodeUnavailableError]:
        """Run one call per node, all at once; each node's result, or the
        NodeUnavailableError it raised, in the order of ``work``."""

        def run(name: str) -> T | NodeUnavailableError:
            try:
                return self.on(name, work[name])
            except NodeUnavailableError as exc:
                return exc

        names = list(work)
        if len(names) <= 1:
            return {name: run(name) for name in names}
        pool = self._workers()
        # The calling thread takes the last node itself: one thread hand-off fewer.
        futures = {name: pool.submit(run, name) for name in names[:-1]}
        last = run(names[-1])
        return {name: futures[name].result() if name in futures else last for name in names}

    # -- closing -------------------------------------------------------------------

    def close(self) -> None:
        """Close every node's socket and stop the worker threads; both come back if used again."""
        with fork_lock():
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.shutdown(wait=True)
        for client in [*self._clients.values(), *self._retired]:
            client.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



def _sender(requests: list[Request[Any]]) -> Callable[[Client], list[Any]]:
    """Send ``requests`` to one node in lockstep, in order."""
    return lambda client: [client._send(request) for request in requests]
