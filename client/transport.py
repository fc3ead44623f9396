"""One request, one reply, with a timeout and retries: the Lazy Pirate pattern.

From the ZeroMQ guide (chapter 4): send, and wait for the reply with a
timeout. On timeout close the socket with LINGER 0, open a new one and resend.
After the last retry give up with :class:`NodeUnavailableError`. A reply that
arrives late goes to the closed socket and is dropped by ZeroMQ, so it can
never be taken for the answer to a later request. A wait cut short by any
other exception (Ctrl-C) also discards the socket, which would otherwise be
stuck waiting for that reply.

A transport is one socket, for one thread at a time; :class:`client.pool.Pool`
lends transports to the threads that share a client. Any ``zmq`` exception
becomes a :class:`common.errors.TransportError`.

Each socket is watched until its first reply (:mod:`client.diagnose`), so a
node that refuses the connection or ends the handshake is told apart from
one that is silent, and reported at once rather than after every retry.

(A DEALER without envelope, two frames per request at the server instead of
three, was measured against REQ here and was no faster.)
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import zmq

from client.diagnose import ConnectionWatch, unavailable
from common.errors import TransportError

if TYPE_CHECKING:
    from client.curve import CurveKeys


class Transport:
    """A lockstep socket to one endpoint, reopened after every timeout.

    Not for two threads at once, nor for a child after ``fork()``: clients
    take one from a :class:`client.pool.Pool` for each call.

    Args:
        endpoint: ``tcp://host:port``.
        timeout_s: how long to wait for each attempt's reply.
        retries: how many times to resend after the first attempt times out.
        context: the ZeroMQ context to open sockets in (the process-wide
            ``zmq.Context.instance()`` by default, looked up at each open, so
            a terminated one is replaced).
        label: how to name the node in error messages.
        curve: CurveZMQ keys; None for a plaintext connection.
        wait_for_ready: wait out a refused connection (a node starting or
            restarting) for the timeout and retries, as Lazy Pirate does;
            False raises :class:`NotListeningError` at once.
    """

    #: The kind of socket, and options set on it before it connects.
    socket_type: int = zmq.REQ
    socket_options: tuple[tuple[int, int], ...] = ()

    def __init__(
        self,
        endpoint: str,
        timeout_s: float,
        retries: int,
        context: zmq.Context | None = None,
        label: str = "",
        curve: "CurveKeys | None" = None,
        wait_for_ready: bool = True,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retries = retries
        self.label = label or endpoint
        self._context = context
        self._socket: zmq.Socket | None = None
        self.curve = curve
        self.wait_for_ready = wait_for_ready
        self._watch: ConnectionWatch | None = None

    def _open(self) -> zmq.Socket:
        socket = (self._context or zmq.Context.instance()).socket(self.socket_type)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            for option, value in self.socket_options:
                socket.setsockopt(option, value)
            # A blocking recv with a timeout: one call per reply, no poll set;
            # zmq.Again means the attempt timed out.
            socket.setsockopt(zmq.RCVTIMEO, max(1, int(self.timeout_s * 1000)))
            if self.endpoint.startswith("tcp://["):
                socket.setsockopt(zmq.IPV6, 1)
            if self.curve is not None:
                self.curve.apply(socket)
            self._watch = ConnectionWatch(socket, self.timeout_s, self.label, self.endpoint, self.curve is not None)
            socket.connect(self.endpoint)
        except BaseException:
            self._socket = socket
            self._discard()
            raise
        self._socket = socket
        return socket

    def _discard(self) -> None:
        """Close the socket (and its watch); never raises."""
        socket, watch, self._socket, self._watch = self._socket, self._watch, None, None
        if socket is None:
            return
        with contextlib.suppress(zmq.ZMQBaseError):
            if watch is not None:
                watch.close(socket)
        with contextlib.suppress(zmq.ZMQBaseError):
            socket.close(linger=0)

    def _failed(self, exc: zmq.ZMQBaseError) -> TransportError:
        """The TransportError for a zmq exception; the socket is discarded."""
        self._discard()
        errno = getattr(exc, "errno", None)
        if errno == zmq.ETERM or (self._context is not None and self._context.closed):
            reason = "the client's ZeroMQ context was terminated"
        else:
            reason = f"ZeroMQ error: {exc}"
        return TransportError(f"{self.label}: {reason}", errno)

    def request(self, frame: bytes, retry: bool = True) -> bytes:
        """Send ``frame`` and return the reply frame.

        Args:
            retry: False sends once only, whatever ``retries`` says.

        Raises:
            NodeUnavailableError: no reply after every attempt;
                :class:`AuthenticationError` at once when the server ends
                the handshake, :class:`NotListeningError` when the
                connection is refused (at once unless ``wait_for_ready``).
            TransportError: ZeroMQ itself failed (a terminated context...).
        """
        try:
            return self._exchange(frame, retry)
        except zmq.ZMQBaseError as exc:
            raise self._failed(exc) from exc

    def _exchange(self, frame: bytes, retry: bool) -> bytes:
        """The Lazy Pirate loop; ZeroMQ errors other than a timeout propagate."""
        attempts = 1 + (self.retries if retry else 0)
        copy = len(frame) < 65536  # zero-copy only pays off for large frames
        started = time.monotonic()
        for _ in range(attempts):
            socket = self._socket or self._open()
            watch = self._watch
            assert watch is not None  # made with the socket
            try:
                socket.send(frame, copy=copy)
                return watch.receive(socket, fail_if_refused=not self.wait_for_ready)
            except zmq.Again:  # no reply in time
                self._discard()  # Lazy Pirate: drop the socket, and any late reply with it
            except BaseException:
                self._discard()  # an interrupted wait: never reuse a socket owed a reply
                raise
        raise unavailable(self.label, time.monotonic() - started, attempts, self.timeout_s, watch)

    def close(self) -> None:
        self._discard()
