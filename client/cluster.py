"""The multi-node client: keys sharded by consistent hashing, R copies each, failover."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import zmq

from client.client import Client
from client.mapping import MappingSugar
from client.placement import Placement
from client.pool import fork_lock
from common.address import DEFAULT_PORT, expand_nodes
from common.errors import NodeUnavailableError
from common.limits import DEFAULT_SCAN_COUNT, MAX_BATCH_KEYS

T = TypeVar("T")

#: How long a node that did not answer is skipped before it is tried again.
DEAD_FOR_S = 5.0


class _Node:
    """One member: its Client (thread-safe itself) and its health."""

    __slots__ = ("name", "client", "dead_until")

    def __init__(self, name: str, client: Client) -> None:
        self.name = name
        self.client = client
        self.dead_until = 0.0


class ClusterClient(MappingSugar):
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
    thread per node.

    Threads and processes:
        One ClusterClient may be shared by threads: each member's
        :class:`Client` lends every call a connection of its own. In a
        child after ``os.fork()`` it opens new connections, as
        :class:`Client` does, and starts its own worker threads (the
        parent's do not exist in the child).

    Placement:
        A key's owners are the first ``replicas`` distinct nodes on a ketama
        consistent-hash ring (see :mod:`client.placement`); every client
        listing the same members places keys the same way. With fewer nodes
        than ``replicas``, every node holds every key.

    Failure detection:
        Use short timeouts (``timeout_s=0.5, retries=1`` by default). A node
        that does not answer in time is marked dead for ``dead_for_s``
        seconds: calls skip it, then try it again. When every owner of a key
        is marked dead, they are all tried anyway.

    Writes (``set``, ``mset``, ``delete``):
        Sent to every owner that is not marked dead. A write succeeds when
        every live owner acknowledged it, and at least one did; an owner
        that times out is marked dead and the write still succeeds on the
        others. If no owner answered, :class:`NodeUnavailableError` is raised
        and the write may or may not have been applied anywhere. If an owner
        refuses it (out of memory, say), the error is raised; owners asked
        before it keep the write. ``mset`` is all-or-none on each node, not
        across nodes. ``delete`` goes to every live node, owner or not, so
        that a copy not yet moved by ``rebalance`` cannot come back.

    Conditional writes (``set`` with nx/xx, ``cas``, ``incr``):
        Decided by the first live owner alone; its outcome is then copied
        to the other owners as a plain set (for ``incr``, the new number and
        the remaining TTL), so the copies never decide differently. Two
        clients racing on one key are ordered by the first owner, but their
        copies to the second owner may land in either order, so the second
        copy of a hot counter can lag until the next write.

    Without failures:
        Each key's ``set``, ``get``, ``cas``, ``incr``, ``mset`` and ``mget``
        are linearizable (the first owner decides and answers them all). A
        ``delete`` racing a write of the same key can leave the second owner
        with a copy the first lacks (the write reached the first owner before
        the delete and the second after it); reads fall back to it on the
        miss, so the deleted value comes back (docs/CLUSTER.md).

    What a reader sees during a failure:
        Reads go to the first live owner and fall back to the next on a
        timeout, and also when the first owner does not have the key (a
        miss costs one request per live owner; owners known to be down are
        not asked about a miss). So with R copies, any R-1 failed
        nodes lose nothing, and a node that comes back empty, or a node
        just added whose keys ``rebalance`` has not moved yet, does not hide
        a key. A read that runs into a failure is slow
        (``timeout_s * (retries + 1)``), not wrong. A node that was
        unreachable but kept running, or that restarts from its data
        directory, misses the overwrites made meanwhile;
        once it answers again it is the first owner again, so a reader can
        see the older value until the next write of that key. Keys are not
        versioned: when owners disagree, nothing decides which is newer
        (``rebalance`` counts such keys as conflicts). ``incr``, ``cas`` and
        ``set nx`` on a key that its new first owner does not hold yet see
        it as missing.

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
            nothing), but ``delete`` reaches them and ``rebalance`` drains
            them.
        server_key, client_key: CurveZMQ keys, as for :class:`Client`, used
            for every node (the nodes share one server key pair).
    """

    def __init__(
        self,
        nodes: str | Iterable[str],
        replicas: int = 2,
        timeout_s: float = 0.5,
        retries: int = 1,
        dead_for_s: float = DEAD_FOR_S,
        context: zmq.Context | None = None,
        default_port: int = DEFAULT_PORT,
        leaving: str | Iterable[str] = (),
        server_key: Any = None,
        client_key: Any = None,
    ) -> None:
        names = expand_nodes(nodes, default_port)
        self.placement = Placement(names, replicas)
        self.replicas = self.placement.replicas
        self.dead_for_s = dead_for_s
        self.leaving = [n for n in (expand_nodes(leaving, default_port) if leaving else []) if n not in names]
        self._nodes = {
            name: _Node(name, Client(name, timeout_s=timeout_s, retries=retries, context=context,
                                     server_key=server_key, client_key=client_key))
            for name in [*self.placement.nodes, *self.leaving]
        }
        self._pool: ThreadPoolExecutor | None = None  # started on first use
        self._pid = os.getpid()

    # -- plumbing --------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        """Every member, by name (not the leaving nodes)."""
        return list(self.placement.nodes)

    def owners(self, key: str) -> list[str]:
        """The nodes that hold ``key``, first owner first."""
        return self.placement.owners(key)

    def is_dead(self, name: str) -> bool:
        """True while ``name`` is skipped after failing to answer."""
        return self._nodes[name].dead_until > time.monotonic()

    def _live_first(self, names: list[str]) -> list[str]:
        """``names`` with those marked dead moved to the end (tried only if all else fails)."""
        now = time.monotonic()
        live = [n for n in names if self._nodes[n].dead_until <= now]
        return live + [n for n in names if n not in live] if len(live) < len(names) else names

    def _live(self, names: list[str]) -> list[str]:
        """The names not marked dead, or all of them when every one is."""
        now = time.monotonic()
        live = [n for n in names if self._nodes[n].dead_until <= now]
        return live or names

    def _workers(self) -> ThreadPoolExecutor:
        """The thread pool: started on first use, after :meth:`close`, and in a
        forked child (the parent's threads do not exist there)."""
        pool = self._pool
        if pool is None or self._pid != os.getpid():
            with fork_lock():
                if self._pool is None or self._pid != os.getpid():
                    self._pool = ThreadPoolExecutor(max_workers=max(1, len(self._nodes)),
                                                    thread_name_prefix="memlookup")
                    self._pid = os.getpid()
                pool = self._pool
        return pool

    def on(self, name: str, call: Callable[[Client], T]) -> T:
        """Run ``call(client)`` on one node; a timeout marks it dead."""
        node = self._nodes[name]
        try:
            result = call(node.client)
        except NodeUnavailableError:
            node.dead_until = time.monotonic() + self.dead_for_s
            raise
        node.dead_until = 0.0
        return result

    def _read(self, key: str, call: Callable[[Client], T], missing: T) -> T:
        """``call`` on the first live owner; on a timeout, or when it says ``missing``, the next one."""
        failure: NodeUnavailableError | None = None
        answered = False
        for name in self._live_first(self.owners(key)):
            if answered and self.is_dead(name):
                break  # a miss is not worth a timeout on a node known to be down
            try:
                result = self.on(name, call)
            except NodeUnavailableError as exc:
                failure = exc
                continue
            if result != missing:
                return result
            answered = True
        if answered:
            return missing
        raise _none_answered(key, failure)

    def _write_all(self, key: str, names: list[str], call: Callable[[Client], T]) -> list[T]:
        """``call`` on each of ``names``; the results of those that answered (at least one)."""
        results: list[T] = []
        failure: NodeUnavailableError | None = None
        for name in names:
            try:
                results.append(self.on(name, call))
            except NodeUnavailableError as exc:
                failure = exc
        if not results:
            raise _none_answered(key, failure)
        return results

    def _conditional(self, key: str, decide: Callable[[Client], T], copy: Callable[[Client, T], None]) -> T:
        """Let the first live owner ``decide``; then ``copy`` its outcome to the other live owners."""
        names = self._live_first(self.owners(key))
        failure: NodeUnavailableError | None = None
        for index, name in enumerate(names):
            try:
                outcome = self.on(name, decide)
            except NodeUnavailableError as exc:
                failure = exc
                continue
            for other in names[index + 1:]:
                if self.is_dead(other):
                    continue  # rebalance restores the copy
                try:
                    self.on(other, lambda c: copy(c, outcome))
                except NodeUnavailableError:
                    pass  # marked dead; rebalance restores the copy
            return outcome
        raise _none_answered(key, failure)

    def on_each(self, work: Mapping[str, Callable[[Client], T]]) -> dict[str, T | NodeUnavailableError]:
        """Run one call per node, all at once; each node's result, or the NodeUnavailableError it raised."""

        def run(name: str) -> T | NodeUnavailableError:
            try:
                return self.on(name, work[name])
            except NodeUnavailableError as exc:
                return exc

        names = list(work)
        pool = self._workers() if len(names) > 1 else None
        # The calling thread takes the last node itself: one thread hand-off fewer.
        futures = {name: pool.submit(run, name) for name in names[:-1]} if pool else {}
        results = {names[-1]: run(names[-1])} if names else {}
        results.update((name, future.result()) for name, future in futures.items())
        return results

    def close(self) -> None:
        """Close every node's socket and stop the worker threads; both come back if used again."""
        with fork_lock():
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.shutdown(wait=True)
        for node in self._nodes.values():
            node.client.close()

    def __enter__(self) -> "ClusterClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ClusterClient({self.nodes!r}, replicas={self.replicas})"

    # -- single-key operations ------------------------------------------------

    def get(self, key: str) -> str | None:
        """The value of ``key`` from its first live owner, or None."""
        return self._read(key, lambda c: c.get(key), None)

    def exists(self, key: str) -> bool:
        return self._read(key, lambda c: c.exists(key), False)

    def ttl(self, key: str) -> float:
        """Seconds until ``key`` expires; -1 if never, -2 if missing (first live owner)."""
        return self._read(key, lambda c: c.ttl(key), -2)

    def set(
        self, key: str, value: str, ttl_s: float | None = None, nx: bool = False, xx: bool = False
    ) -> bool:
        """Store ``value`` under ``key`` on every live owner (see the write rule above).

        Returns:
            True if stored, False if ``nx``/``xx`` prevented it (decided by the
            first live owner).
        """
        if nx or xx:
            return self._conditional(
                key,
                lambda c: c.set(key, value, ttl_s=ttl_s, nx=nx, xx=xx),
                _copy_if_stored(key, value, ttl_s),
            )
        return all(self._write_all(key, self._live(self.owners(key)), lambda c: c.set(key, value, ttl_s=ttl_s)))

    def delete(self, key: str) -> bool:
        """Remove ``key`` from every live node (owner, not, or leaving); True if any had it.

        Every node, not only the owners, so that a copy still waiting on a
        former owner for ``rebalance`` cannot bring the key back. Succeeds
        when at least one owner acknowledged it.
        """
        results = self.on_each({name: _delete(key) for name in self._live(list(self._nodes))})
        owners = self.owners(key)
        if all(isinstance(results.get(name), NodeUnavailableError) or name not in results for name in owners):
            failure = next((r for r in results.values() if isinstance(r, NodeUnavailableError)), None)
            raise _none_answered(key, failure)
        return any(result is True for result in results.values())

    def cas(self, key: str, expected: str, value: str, ttl_s: float | None = None) -> bool:
        """Compare-and-set, decided by the first live owner, then copied to the others."""
        return self._conditional(
            key,
            lambda c: c.cas(key, expected, value, ttl_s=ttl_s),
            _copy_if_stored(key, value, ttl_s),
        )

    def incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` on the first live owner; the result (and its TTL) is copied to the others."""
        remaining: list[float] = []

        def decide(c: Client) -> int:
            result = c.incr(key, delta)
            if self.replicas > 1:
                remaining.append(c.ttl(key))
            return result

        def copy(c: Client, result: int) -> None:
            ttl_s = remaining[0] if remaining and remaining[0] > 0 else None
            c.set(key, str(result), ttl_s=ttl_s)

        return self._conditional(key, decide, copy)

    # -- batches ---------------------------------------------------------------

    def mget(self, keys: Sequence[str]) -> list[str | None]:
        """The values of ``keys`` in order; each node's share fetched in parallel.

        Keys whose owner fails, or does not have them, are asked of their
        next owner (so a miss costs one more round when R > 1).
        """
        keys = list(keys)
        values: list[str | None] = [None] * len(keys)
        # Owners still to ask for each key, live ones first.
        pending = {index: self._live_first(self.owners(key)) for index, key in enumerate(keys)}
        answered: set[int] = set()
        failure: NodeUnavailableError | None = None
        while pending:
            by_node: dict[str, list[int]] = {}
            for index, candidates in pending.items():
                by_node.setdefault(candidates.pop(0), []).append(index)
            work = {name: _batched_get([keys[i] for i in indexes]) for name, indexes in by_node.items()}
            for name, result in self.on_each(work).items():
                indexes = by_node[name]
                if isinstance(result, NodeUnavailableError):
                    failure = result
                    result = [None] * len(indexes)
                else:
                    answered.update(indexes)
                for index, value in zip(indexes, result):
                    if value is not None:
                        values[index] = value
                        del pending[index]
                        continue
                    if index in answered:  # a miss: ask the other live owners only
                        pending[index] = [n for n in pending[index] if not self.is_dead(n)]
                    if not pending[index]:
                        del pending[index]
                        if index not in answered:
                            raise _none_answered(keys[index], failure)
        return values

    def mset(self, pairs: Mapping[str, str], ttl_s: float | None = None) -> None:
        """Store every pair on each of its live owners; nodes are written in parallel.

        Succeeds when every key was acknowledged by at least one owner and by
        every owner that answered. Raises :class:`NodeUnavailableError` when
        no owner of some key answered (the other keys may have been stored).
        """
        pairs = dict(pairs)
        by_node: dict[str, dict[str, str]] = {}
        for key, value in pairs.items():
            for name in self._live(self.owners(key)):
                by_node.setdefault(name, {})[key] = value
        results = self.on_each(
            {name: _batched_set(share, ttl_s) for name, share in by_node.items()}
        )
        failed = {name for name, result in results.items() if isinstance(result, NodeUnavailableError)}
        if not failed:
            return
        for key in pairs:
            if all(name in failed for name, share in by_node.items() if key in share):
                failure = results[next(iter(failed))]
                raise _none_answered(key, failure if isinstance(failure, NodeUnavailableError) else None)

    # -- whole-cluster operations ------------------------------------------------

    def keys(self, pattern: str = "*", count: int = DEFAULT_SCAN_COUNT) -> Iterator[str]:
        """Every key matching ``pattern`` on any node, once (remembers what it returned)."""
        seen: set[str] = set()
        for name in self.nodes:
            if self.is_dead(name):
                continue
            try:
                found = self.on(name, lambda c: list(c.keys(pattern, count)))
            except NodeUnavailableError:
                continue  # its keys have copies elsewhere
            for key in found:
                if key not in seen:
                    seen.add(key)
                    yield key

    def health(self) -> dict[str, bool]:
        """Ping every node at once: name -> answered."""
        results = self.on_each({name: Client.ping for name in self.nodes})
        return {name: result is True for name, result in results.items()}

    def ping(self) -> bool:
        """True when every node answers.

        Raises:
            NodeUnavailableError: naming the nodes that did not.
        """
        down = [name for name, up in self.health().items() if not up]
        if down:
            raise NodeUnavailableError(f"no reply from {', '.join(down)}", node=",".join(down))
        return True

    def stats(self) -> dict[str, Any]:
        """Each node's stats and their totals.

        Returns ``{"nodes": {name: stats or {"error": message}}, "total":
        {...}, "replicas": R}``. The total sums keys, memory and operation
        counts over the nodes that answered; ``keys`` counts every copy.
        """
        results = self.on_each({name: Client.stats for name in self.nodes})
        per_node: dict[str, Any] = {}
        total: dict[str, Any] = {"nodes": len(results), "nodes_up": 0, "keys": 0, "memory_bytes": 0,
                                 "rss_bytes": 0, "ops": {}, "errors": {}}
        for name, result in results.items():
            if isinstance(result, NodeUnavailableError):
                per_node[name] = {"error": str(result)}
                continue
            per_node[name] = result
            total["nodes_up"] += 1
            for figure in ("keys", "memory_bytes", "rss_bytes"):
                total[figure] += int(result.get(figure, 0))
            for section in ("ops", "errors"):
                for op, count in result.get(section, {}).items():
                    total[section][op] = total[section].get(op, 0) + count
        return {"replicas": self.replicas, "total": total, "nodes": per_node}


def _delete(key: str) -> Callable[[Client], bool]:
    return lambda client: client.delete(key)


def _copy_if_stored(key: str, value: str, ttl_s: float | None) -> Callable[[Client, bool], None]:
    """Copy a conditional write to another owner when the first owner stored it."""

    def copy(client: Client, stored: bool) -> None:
        if stored:
            client.set(key, value, ttl_s=ttl_s)

    return copy


def _batched_get(keys: list[str]) -> Callable[[Client], list[str | None]]:
    def call(client: Client) -> list[str | None]:
        values: list[str | None] = []
        for start in range(0, len(keys), MAX_BATCH_KEYS):
            values.extend(client.mget(keys[start:start + MAX_BATCH_KEYS]))
        return values

    return call


def _batched_set(pairs: dict[str, str], ttl_s: float | None) -> Callable[[Client], None]:
    def call(client: Client) -> None:
        items = list(pairs.items())
        for start in range(0, len(items), MAX_BATCH_KEYS):
            client.mset(dict(items[start:start + MAX_BATCH_KEYS]), ttl_s=ttl_s)

    return call


def _none_answered(key: str, failure: NodeUnavailableError | None) -> NodeUnavailableError:
    detail = f": {failure}" if failure else ""
    return NodeUnavailableError(f"no owner of key {key!r} answered{detail}", node=failure.node if failure else "")


__all__ = ["ClusterClient"]
