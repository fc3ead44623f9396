"""Many requests in flight on one connection: the transport under pipelines and streams.

Wire: a DEALER socket sends each request as one frame, with no envelope, and
gets each reply as one frame. Replies on one connection arrive in the order
the requests were sent -- ZeroMQ keeps a connection's order and the server
answers one connection's requests in order -- so the oldest unanswered
request owns the next reply. (One frame, not an envelope of several: measured,
every frame costs the server a socket call each way.)

One connection, though: the socket is told never to reconnect. A DEALER that
reconnects by itself after its connection drops (a server killed and
restarted) loses the requests that were in the old connection but sends the
ones queued since, and their replies would be taken for the lost requests'
(the history checker caught it: a ``get`` answered with another key's
value). Without reconnection nothing more is answered on that socket: a send
finds it disconnected, or the wait times out, and every unanswered request is
resent on a new one. For the same reason at most ``MAX_WINDOW_MESSAGES``
messages are in flight: the server queues 1,000 replies per connection at most
and would drop the rest.
(Tagging each request with an envelope frame the server echoes would also
work, but measured with ``python -m bench -P 64``, it costs the server 7 us
more per message, +57 % at one request a message and +13 % at 16.)

Retries: when no reply arrives within ``timeout_s``, the socket is closed (a
late reply dies with it), a new one is opened and every unanswered request is
sent again, in order, up to ``retries`` times in a row. Writes carry request
ids, and the server answers a resent write it already applied with its first
reply instead of applying it again -- as long as it still remembers it (the
server keeps the last 10,000 write replies across all clients, so keep the
window well below that). Reads are simply asked again. Any other exception
while requests are in flight (Ctrl-C, an exception from a stream's
callback; in asyncio, cancellation) abandons them with the socket, so no
reply is ever left for the next use of the connection.

:class:`StreamState` is what the blocking :class:`StreamTransport` and
:class:`client.async_transport.AsyncStreamTransport` share.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import zmq

from client.transport import Connection, S
from common.errors import NodeUnavailableError, TransportError
from common.limits import MAX_QUEUED_MESSAGES

if TYPE_CHECKING:
    from client.curve import CurveKeys

#: Most messages in flight on one connection: half the replies the server
#: queues per connection (more could be dropped, and the order broken; ZeroMQ's
#: high-water marks are approximate, hence the half).
MAX_WINDOW_MESSAGES = MAX_QUEUED_MESSAGES // 2

_NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq's enum costs a Python call per use

#: Called with each reply frame, in the order the requests were submitted.
OnReply = Callable[[bytes], None]


class StreamState(Connection[S]):
    """What a streaming transport keeps, blocking or asyncio: the unanswered
    requests, oldest first, and the window (messages in flight at most).

    Arguments as :class:`client.transport.Connection`, and ``window``.
    """

    socket_type = zmq.DEALER
    # Never let ZeroMQ drop or block a send: the window bounds the queue.
    # Never reconnect: see the module docstring.
    socket_options = ((zmq.SNDHWM, 0), (zmq.RECONNECT_IVL, -1))

    def __init__(
        self,
        endpoint: str,
        timeout_s: float,
        retries: int,
        window: int,
        context: zmq.Context[S] | None = None,
        label: str = "",
        curve: CurveKeys | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        super().__init__(endpoint, timeout_s, retries, context, label, curve)
        self.window = min(window, MAX_WINDOW_MESSAGES)
        #: Unanswered requests, oldest first: (frame, on_reply).
        self._in_flight: collections.deque[tuple[bytes, OnReply]] = collections.deque()

    def _failed(self, exc: zmq.ZMQBaseError) -> TransportError:
        self._in_flight.clear()  # unanswered, and never will be on a new socket
        return super()._failed(exc)

    @property
    def unanswered(self) -> int:
        """Requests submitted and not answered yet."""
        return len(self._in_flight)

    def abandon(self) -> None:
        """Forget the unanswered requests with the socket that carried them
        (their late replies die with it)."""
        self._in_flight.clear()
        self._discard()

    def _lost(self, failures: int, started: float) -> NodeUnavailableError:
        lost = len(self._in_flight)
        self.abandon()
        return self._gave_up(failures, started, f"; {lost} pipelined requests unanswered: their writes may or "
                             "may not have been applied")


class StreamTransport(StreamState["zmq.Socket[bytes]"]):
    """A DEALER socket that keeps up to ``window`` requests in flight.

    :meth:`submit` sends at once while fewer than ``window`` requests are
    unanswered (at most :data:`MAX_WINDOW_MESSAGES`), otherwise it first
    waits for the oldest reply; :meth:`drain` waits for all. Every reply is
    handed to the callback given with its request, in submission order. One
    thread at a time, as a :class:`client.transport.Transport`: a Client
    lends one to each :meth:`Pipeline.execute` and each :class:`Stream`.
    ``timeout_s`` is how long to wait for the next reply before resending;
    ``retries`` how many times in a row to reopen and resend before giving
    up. Other arguments as :class:`client.transport.Connection`.
    """

    def _new_socket(self) -> zmq.Socket[bytes]:
        context: zmq.Context[zmq.Socket[bytes]] = self._context or zmq.Context.instance()
        return context.socket(self.socket_type)

    @staticmethod
    def _send(socket: zmq.Socket[bytes], frame: bytes) -> bool:
        """False when the socket has lost its connection (it would block: it never reconnects)."""
        try:
            socket.send(frame, _NOBLOCK, len(frame) < 65536)
        except zmq.Again:
            return False
        return True

    def submit(self, frame: bytes, on_reply: OnReply) -> None:
        """Send ``frame``; ``on_reply`` gets its reply frame later (during a
        later ``submit`` or ``drain``)."""
        try:
            while len(self._in_flight) >= self.window:
                self._receive_one()
            self._in_flight.append((frame, on_reply))
            if not self._send(self._socket or self._open(), frame):
                self._resend_all()  # the connection dropped: what it carried may be lost too
        except zmq.ZMQBaseError as exc:
            raise self._failed(exc) from exc
        except BaseException:
            self.abandon()
            raise

    def drain(self) -> None:
        """Wait until every submitted request has been answered."""
        try:
            while self._in_flight:
                self._receive_one()
        except zmq.ZMQBaseError as exc:
            raise self._failed(exc) from exc
        except BaseException:
            self.abandon()
            raise

    def _receive_one(self) -> None:
        failures = 0
        started = time.monotonic()
        while True:
            socket = self._socket or self._open()
            try:
                reply = socket.recv()
            except zmq.Again:
                failures += 1
                if failures > self.retries:
                    raise self._lost(failures, started) from None
                self._resend_all()
                continue
            self._in_flight.popleft()[1](reply)
            return

    def _resend_all(self) -> None:
        """Lazy Pirate for a stream: a new socket, every unanswered request again."""
        self._discard()
        socket = self._open()
        for frame, _ in self._in_flight:
            if not self._send(socket, frame):
                return  # not connected yet after all: the wait times out and comes back here
