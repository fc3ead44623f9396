"""The transports of :mod:`client.transport` and :mod:`client.stream_transport`, awaiting (``zmq.asyncio``).

The same Lazy Pirate rules, step for step: each attempt waits ``timeout_s``
(the socket's receive timeout, which ``zmq.asyncio`` turns into ``zmq.Again``
on the awaited receive), a timed-out socket is closed with LINGER 0 and a new
one opened, the same frame -- the same request id -- is sent again, and after
``retries`` resends :class:`NodeUnavailableError` is raised. Opening,
discarding and error mapping are :class:`client.transport.Connection`'s.

Cancellation: a call cancelled while it waits (``asyncio.CancelledError``,
``asyncio.wait_for`` running out, a task group ending) discards its socket,
exactly as a timeout does, so the reply still owed to it can never be read
by a later request on the same transport; the next request opens a new
socket. A stream cancelled mid-flight likewise abandons its unanswered
requests with their socket.
"""

from __future__ import annotations

import time
from typing import Any

import zmq
import zmq.asyncio

from client.stream_transport import OnReply, StreamState
from client.transport import Connection

_NOBLOCK = int(zmq.NOBLOCK)


def _asyncio_socket(connection: Connection[zmq.asyncio.Socket]) -> zmq.asyncio.Socket:
    context: zmq.asyncio.Context = connection._context or zmq.asyncio.Context.instance()  # type: ignore[assignment]
    return context.socket(connection.socket_type)


class AsyncTransport(Connection[zmq.asyncio.Socket]):
    """A lockstep REQ socket, awaited; one request at a time (a pool lends one to each call).

    Arguments as :class:`client.transport.Connection`, with a
    ``zmq.asyncio.Context`` (``zmq.asyncio.Context.instance()`` by default).
    """

    def _new_socket(self) -> zmq.asyncio.Socket:
        return _asyncio_socket(self)

    async def request(self, frame: bytes, retry: bool = True) -> bytes:
        """Send ``frame`` and return the reply frame (see :meth:`client.transport.Transport.request`)."""
        try:
            return await self._exchange(frame, retry)
        except zmq.ZMQBaseError as exc:
            raise self._failed(exc) from exc

    async def _exchange(self, frame: bytes, retry: bool) -> bytes:
        attempts = 1 + (self.retries if retry else 0)
        copy = len(frame) < 65536
        started = time.monotonic()
        for _ in range(attempts):
            socket = self._socket or self._open()
            try:
                await socket.send(frame, 0, copy)
                reply: bytes = await socket.recv()
                return reply
            except zmq.Again:  # RCVTIMEO passed
                self._timed_out(started)
            except BaseException:  # cancelled, or interrupted: never reuse a socket owed a reply
                self._discard()
                raise
        raise self._gave_up(attempts, started)


class AsyncStreamTransport(StreamState[zmq.asyncio.Socket]):
    """:class:`client.stream_transport.StreamTransport`, awaited: a DEALER with up to ``window`` requests in flight."""

    def _new_socket(self) -> zmq.asyncio.Socket:
        return _asyncio_socket(self)

    @staticmethod
    async def _send(socket: zmq.asyncio.Socket, frame: bytes) -> bool:
        """False when the socket has lost its connection (it never reconnects)."""
        try:
            await socket.send(frame, _NOBLOCK, len(frame) < 65536)
        except zmq.Again:
            return False
        return True

    async def submit(self, frame: bytes, on_reply: OnReply) -> None:
        """Send ``frame``; ``on_reply`` gets its reply frame during a later ``submit`` or ``drain``."""
        try:
            while len(self._in_flight) >= self.window:
                await self._receive_one()
            self._in_flight.append((frame, on_reply))
            if not await self._send(self._socket or self._open(), frame):
                await self._resend_all()
        except zmq.ZMQBaseError as exc:
            raise self._failed(exc) from exc
        except BaseException:
            self.abandon()
            raise

    async def drain(self) -> None:
        """Wait until every submitted request has been answered."""
        try:
            while self._in_flight:
                await self._receive_one()
        except zmq.ZMQBaseError as exc:
            raise self._failed(exc) from exc
        except BaseException:
            self.abandon()
            raise

    async def _receive_one(self) -> None:
        failures = 0
        started = time.monotonic()
        while True:
            socket = self._socket or self._open()
            try:
                reply: Any = await socket.recv()
            except zmq.Again:
                failures += 1
                if failures > self.retries:
                    raise self._lost(failures, started) from None
                await self._resend_all()
                continue
            self._in_flight.popleft()[1](reply)
            return

    async def _resend_all(self) -> None:
        self._discard()
        socket = self._open()
        for frame, _ in self._in_flight:
            if not await self._send(socket, frame):
                return
