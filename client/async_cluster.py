"""The multi-node client for asyncio: :class:`client.ClusterClient`'s rules, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import zmq.asyncio

from client.async_client import AsyncClient
from client.commands import PING
from client.commands_async import AsyncCommands
from client.membership import KeptMembership, adopt, member_client
from client.requests import Command, Request
from client.routing import DEAD_FOR_S, Answer, Membership, MembershipView, Plan, Step, health, plan
from common.address import DEFAULT_PORT
from common.errors import InvalidRequestError, MemlookupError, NodeUnavailableError

if TYPE_CHECKING:
    from common.keys import KeySource

T = TypeVar("T")


class AsyncClusterClient(MembershipView, AsyncCommands):
    """Many memlookup nodes used as one table, for asyncio programs.

    ::

        async with AsyncClusterClient("10.0.0.1,10.0.0.2,10.0.0.3", replicas=2) as table:
            await table.set("norway", "oslo")
            await table.get("norway")           # 'oslo', even with one node down

    Placement, the write rule, conditional writes, failover, reads during a
    failure, ``scan`` and ``keys``: exactly :class:`client.ClusterClient`'s
    (the same plans of :mod:`client.routing` run under both). Each member gets
    its own :class:`client.AsyncClient`; the requests of one step that go to
    several nodes are sent at once (``asyncio.gather``) instead of on a
    thread pool. Arguments as :class:`client.ClusterClient`'s, with a
    ``zmq.asyncio.Context``. One event loop at a time; shared by its tasks.
    Cancelling a call cancels its requests to every node (each discards
    its connection, as :class:`client.AsyncClient` does).
    """

    _scan_repeats_keys: ClassVar[bool] = True

    def __init__(
        self,
        nodes: str | Iterable[str],
        replicas: int = 2,
        timeout_s: float = 0.5,
        retries: int = 1,
        dead_for_s: float = DEAD_FOR_S,
        context: zmq.asyncio.Context | None = None,
        default_port: int = DEFAULT_PORT,
        leaving: str | Iterable[str] = (),
        server_key: KeySource | None = None,
        client_key: KeySource | None = None,
    ) -> None:
        self._membership = membership = Membership(nodes, replicas, default_port, leaving, dead_for_s)
        self._client_options: dict[str, Any] = {"timeout_s": timeout_s, "retries": retries, "context": context,
                                                "server_key": server_key, "client_key": client_key}
        self._clients = {name: AsyncClient(name, **self._client_options) for name in membership.everyone}
        self._kept = KeptMembership(membership.everyone)
        self._refreshing = asyncio.Lock()
        self._retired: list[AsyncClient] = []  # replaced when a member moved; closed with the others

    async def health(self) -> dict[str, bool]:
        """Ping every member at once: name -> answered."""
        if self._kept.due():
            await self._refresh()
        return await self._run(health(self._membership, PING.request((), {})))

    async def _execute(self, command: Command[T], *args: Any, **options: Any) -> T:
        if self._kept.due():
            await self._refresh()
        return await self._run(plan(self._membership, command.request(args, options)))

    async def _refresh(self) -> None:
        """:meth:`client.ClusterClient._refresh`, awaited: one task at a time, the others go on
        with the membership as it is (but wait for the first answer)."""
        if self._refreshing.locked() and self._kept.dynamic is not None:
            return
        async with self._refreshing:
            if not self._kept.due():  # another task refreshed meanwhile
                return
            try:
                update = await self._run(self._kept.refresh(self._membership))
            except InvalidRequestError:  # members refused: a server older than kept memberships
                self._kept.static()
                return
            except MemlookupError:  # the node asked failed otherwise: the next refresh asks another
                return
            if self._kept.dynamic:
                self._membership, self._clients, retired = adopt(
                    self._kept, update, self._membership, self._clients,
                    lambda address: AsyncClient(address, **self._client_options))
                self._retired += retired

    async def _run(self, steps: Plan[T]) -> T:
        """Play a plan of :mod:`client.routing`: each step's nodes at once."""
        try:
            step = next(steps)
            while True:
                step = steps.send(await self._answer(step))
        except StopIteration as done:
            result: T = done.value  # the plan's return value (typeshed types it Any)
            return result
        finally:
            steps.close()

    async def _answer(self, step: Step) -> Answer:
        names = list(step)
        if len(names) == 1:
            return {names[0]: await self._on(names[0], step[names[0]])}
        outcomes = await asyncio.gather(*(self._on(name, step[name]) for name in names), return_exceptions=True)
        answer: Answer = {}
        for name, outcome in zip(names, outcomes, strict=True):
            # Every node has finished: the first refusal (or bug) ends the plan
            # (a NodeUnavailableError is _on's answer, not raised).
            if isinstance(outcome, NodeUnavailableError) or not isinstance(outcome, BaseException):
                answer[name] = outcome
            else:
                raise outcome
        return answer

    async def _on(self, name: str, requests: list[Request[Any]]) -> list[Any] | NodeUnavailableError:
        """``requests`` to one node in lockstep: their results, or the NodeUnavailableError
        that marks it dead (an answer marks it alive)."""
        try:
            client = member_client(self._clients, name)
            results = [await client._send(request) for request in requests]
        except NodeUnavailableError as exc:
            self._membership.failed(name)
            return exc
        self._membership.answered(name)
        return results

    def close(self) -> None:
        """Close every node's sockets; they reopen if used again."""
        for client in [*self._clients.values(), *self._retired]:
            client.close()

    async def __aenter__(self) -> AsyncClusterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
