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

import zmq
import zmq.asyncio

from client.stream_transport import OnReply, StreamState
from client.transport import Connection

_NOBLOCK = int(zmq.NOBLOCK)


class Awaiting(Connection[zmq.asyncio.Socket]):
    """A connection whose socket is awaited (``zmq.asyncio``), and a blocking view of it.

    What needs no waiting -- a send (the window bounds the queue), a reply
    already there -- goes through the view, a plain socket over the same
    libzmq socket: measured, each ``await`` on a ``zmq.asyncio`` send or recv
    costs 10 to 30 us of futures and event-loop callbacks, which the view
    skips. Only an empty receive queue is awaited, and ``zmq.asyncio`` then
    checks the socket's events before it waits, so no reply is missed.
    """

    _view: zmq.Socket[bytes] | None = None

    def _new_socket(self) -> zmq.asyncio.Socket:
        context = self._context or zmq.asyncio.Context.instance()
        return context.socket(self.socket_type)

    def _open(self) -> zmq.asyncio.Socket:
        socket = super()._open()
        self._view = zmq.Socket.shadow(socket.underlying)  # never closed itself: the socket owns the handle
        return socket

    def _discard(self) -> None:
        self._view = None
        super()._discard()

    async def _receive(self, socket: zmq.asyncio.Socket) -> bytes:
        """The next reply: at once if it is there, else awaited (``zmq.Again`` after ``timeout_s``)."""
        assert self._view is not None  # made with the socket
        try:
            return self._view.recv(_NOBLOCK)
        except zmq.Again:
            reply: bytes = await socket.recv()
            return reply


class AsyncTransport(Awaiting):
    """A lockstep REQ socket, awaited; one request at a time (a pool lends one to each call).

    Arguments as :class:`client.transport.Connection`, with a
    ``zmq.asyncio.Context`` (``zmq.asyncio.Context.instance()`` by default).
    """

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
                assert self._view is not None  # made with the socket
                self._view.send(frame, 0, copy)  # a REQ send queues at once: there is one request at a time
                return await self._receive(socket)
            except zmq.Again:  # RCVTIMEO passed
                self._timed_out()
            except BaseException:  # cancelled, or interrupted: never reuse a socket owed a reply
                self._discard()
                raise
        raise self._gave_up(attempts, started)


class AsyncStreamTransport(StreamState[zmq.asyncio.Socket], Awaiting):
    """:class:`client.stream_transport.StreamTransport`, awaited: a DEALER with up to ``window`` requests in flight."""

    def _send(self, frame: bytes) -> bool:
        """False when the socket has lost its connection (it never reconnects)."""
        assert self._view is not None  # made with the socket
        try:
            self._view.send(frame, _NOBLOCK, len(frame) < 65536)
        except zmq.Again:
            return False
        return True

    async def submit(self, frame: bytes, on_reply: OnReply) -> None:
        """Send ``frame``; ``on_reply`` gets its reply frame during a later ``submit`` or ``drain``."""
        try:
            while len(self._in_flight) >= self.window:
                await self._receive_one()
            self._in_flight.append((frame, on_reply))
            if self._socket is None:
                self._open()
            if not self._send(frame):
                self._resend_all()
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
                reply = await self._receive(socket)
            except zmq.Again:
                failures += 1
                if failures > self.retries:
                    raise self._lost(failures, started) from None
                self._resend_all()
                continue
            self._in_flight.popleft()[1](reply)
            return

    def _resend_all(self) -> None:
        self._discard()
        self._open()
        for frame, _ in self._in_flight:
            if not self._send(frame):
                return
