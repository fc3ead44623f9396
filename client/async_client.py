"""The single-node client for asyncio: :class:`Client`'s methods, awaited, and its pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import zmq.asyncio

from client.async_transport import AsyncStreamTransport, AsyncTransport
from client.commands_async import AsyncCommands
from client.node import NodeSettings
from client.pipeline import QueuedCommands
from client.pool import Pool
from client.requests import Command, Request
from common.address import DEFAULT_PORT

if TYPE_CHECKING:
    from typing_extensions import Self

    from common.keys import KeySource

T = TypeVar("T")


class AsyncClient(NodeSettings[zmq.asyncio.Context], AsyncCommands):
    """A connection to one memlookup node, for asyncio programs.

    ::

        import asyncio
        from client import AsyncClient

        async def main():
            async with AsyncClient("127.0.0.1:7400", timeout_s=1.0, retries=2) as table:
                await table.set("norway", "oslo")
                await table.get("norway")            # 'oslo'
                await asyncio.gather(*(table.incr("visits") for _ in range(100)))
                async for key in table.keys("n*"):
                    print(key)

        asyncio.run(main())

    The methods, their arguments, results and errors are :class:`Client`'s
    (:class:`client.commands.Commands`), each awaited; there is no
    ``table[key]`` form. The constructor's arguments are :class:`Client`'s
    too, with a ``zmq.asyncio.Context`` (``zmq.asyncio.Context.instance()``
    by default).

    Timeouts and retries:
        As :class:`Client`'s (the Lazy Pirate pattern): every attempt waits
        ``timeout_s``; on timeout the socket is closed with LINGER 0, a new
        one opened and the same request -- with the same request id, so a
        write is never applied twice -- sent again, up to ``retries`` times;
        then :class:`NodeUnavailableError`. A late reply dies with its
        socket.

    Cancellation:
        A call cancelled while it waits (``task.cancel()``,
        ``asyncio.wait_for`` timing out) discards its connection, so the
        reply still owed to it is never read by a later call; a write so
        cancelled may or may not have been applied. The client stays usable.

    Tasks:
        One AsyncClient may be shared by many tasks of one event loop: each
        call borrows a connection of its own from the client's pool and gives
        it back, so as many requests are in flight as tasks are calling, and
        one task's timeout never holds up another's call. It is not for
        several threads or event loops at once.

    Error Handling:
        As :class:`Client`'s: every error derives from
        :class:`common.errors.MemlookupError`, and no ``zmq`` exception
        leaves the client (a terminated context is a :class:`TransportError`).

    Many commands at once:
        :meth:`pipeline` gives an :class:`AsyncPipeline`: commands are queued
        as in a :class:`client.pipeline.Pipeline` and ``await p.execute()``
        sends them.
    """

    def __init__(
        self,
        node: str,
        timeout_s: float = 1.0,
        retries: int = 2,
        context: zmq.asyncio.Context | None = None,
        default_port: int = DEFAULT_PORT,
        server_key: KeySource | None = None,
        client_key: KeySource | None = None,
        wait_for_ready: bool = True,
    ) -> None:
        super().__init__(node, timeout_s, retries, context, default_port, server_key, client_key, wait_for_ready)
        self._transports: Pool[AsyncTransport] = Pool(self._new_transport)
        self._stream_pools: dict[int, Pool[AsyncStreamTransport]] = {}

    async def _execute(self, command: Command[T], *args: Any, **options: Any) -> T:
        return await self._call(command, command.frame(args, options, self._rids))

    async def _send(self, request: Request[T]) -> T:
        """Send a request checked already (a cluster's); its result."""
        return await self._call(request.command, self._rids.frame(request))

    async def _call(self, command: Command[T], frame: bytes) -> T:
        """Send ``frame`` in lockstep (Lazy Pirate) on a connection of the pool; ``command``'s result."""
        transports = self._transports
        lease = transports.take()
        try:
            reply = await lease[1].request(frame)
        finally:
            transports.give(lease)
        return command.parse(reply)

    def _new_transport(self) -> AsyncTransport:
        return AsyncTransport(self.endpoint, self._timeout_s, self._retries, self._context_here(),
                              label=self.node, curve=self._curve, wait_for_ready=self._wait_for_ready)

    def _stream_pool(self, window_messages: int) -> Pool[AsyncStreamTransport]:
        pool = self._stream_pools.get(window_messages)
        if pool is None:

            def new_stream() -> AsyncStreamTransport:
                return AsyncStreamTransport(self.endpoint, self._timeout_s, self._retries, window_messages,
                                            self._context_here(), self.node, curve=self._curve)

            pool = self._stream_pools.setdefault(window_messages, Pool(new_stream))
        return pool

    def pipeline(self, window: int | None = None, per_message: int | None = None) -> AsyncPipeline:
        """An :class:`AsyncPipeline`: queue commands, ``await p.execute()`` sends them together.

        Args:
            window: most commands in flight at once (default 256).
            per_message: commands packed into one ``batch`` message (default 16).
        """
        return AsyncPipeline(self, *self._window_messages(window, per_message))

    def close(self) -> None:
        """Close the sockets (one in use closes when its call ends). The client reconnects if used again."""
        self._transports.close()
        for pool in list(self._stream_pools.values()):
            pool.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncPipeline(QueuedCommands):
    """:class:`client.pipeline.Pipeline` for an :class:`AsyncClient`: queue, then ``await execute()``.

    ::

        async with table.pipeline() as p:
            p.set("a", "1").incr("hits").get("a")
        p.results                     # [True, 1, '1']

        p = table.pipeline()
        p.set("b", "2").get("b")
        await p.execute()             # [True, '2']

    Queueing is not awaited (nothing is sent yet); the results, errors,
    retries and ``raise_on_error`` are :class:`client.pipeline.Pipeline`'s.
    A cancelled ``execute`` abandons its commands with its connection: any
    of them may or may not have been applied.
    """

    def __init__(self, client: AsyncClient, window_messages: int, per_message: int) -> None:
        super().__init__(client._rids, window_messages, per_message)
        self._client = client

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send every queued command and return their results, in order (see
        :meth:`client.pipeline.Pipeline.execute`)."""
        queued, results, outbox = self._take()
        pool = self._client._stream_pool(self._window_messages)
        lease = pool.take()
        try:
            transport = lease[1]
            for frame, command in queued:
                for message in outbox.add(frame, command):
                    await transport.submit(*message)
            last = outbox.flush()
            if last is not None:
                await transport.submit(*last)
            await transport.drain()
        finally:
            pool.give(lease)
        return self._finish(results, raise_on_error)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            await self.execute()
        else:
            self._queued.clear()
