"""One request, one reply, with a timeout and retries: the Lazy Pirate pattern.

From the ZeroMQ guide (chapter 4): send, and wait for the reply with a
timeout. On timeout close the socket with LINGER 0, open a new one and resend.
After the last retry give up with :class:`NodeUnavailableError`. A reply that
arrives late goes to the closed socket and is dropped by ZeroMQ, so it can
never be taken for the answer to a later request. A wait cut short by any
other exception (Ctrl-C) also discards the socket, which would otherwise be
stuck waiting for that reply.

Sharing: a ZeroMQ socket must not be used by two threads at once, nor by a
child process after ``fork()``. So each request holds the transport's lock
from send to reply, and a transport used in a forked child first drops what
it inherited (socket, lock, and the parent's context, which is unusable
there) without touching it, and opens a new socket in the child's own
``zmq.Context.instance()``.

Any ``zmq`` exception becomes a :class:`common.errors.TransportError`.

(A DEALER without envelope, two frames per request at the server instead of
three, was measured against REQ here and was no faster.)
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING, Iterator

import zmq

from common.errors import AuthenticationError, NodeUnavailableError, TransportError

if TYPE_CHECKING:
    from client.curve import CurveKeys

_fork_lock = threading.Lock()


def _renew_fork_lock() -> None:
    global _fork_lock
    _fork_lock = threading.Lock()  # the parent's may have been held by a thread that is not here


os.register_at_fork(after_in_child=_renew_fork_lock)


def fork_lock() -> threading.Lock:
    """The lock under which an object replaces what it inherited across ``fork()``,
    so that two threads of the child do not both replace it."""
    return _fork_lock


class Transport:
    """A lockstep socket to one endpoint, reopened after every timeout.

    Safe to share between threads: a request holds :attr:`lock` from send to
    reply (measured cost in ``bench/shared_client.py``); other threads wait
    their turn, so a request may wait for others' requests (and their
    timeouts) before its own ``timeout_s`` starts.

    Args:
        endpoint: ``tcp://host:port``.
        timeout_s: how long to wait for each attempt's reply.
        retries: how many times to resend after the first attempt times out.
        context: the ZeroMQ context to open sockets in (the process-wide
            ``zmq.Context.instance()`` by default, looked up at each open).
        label: how to name the node in error messages.
        curve: CurveZMQ keys; None for a plaintext connection.
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
        self._monitor: zmq.Socket | None = None
        #: Held for a whole exchange; one thread at a time uses the socket.
        self.lock = threading.Lock()
        self._pid = os.getpid()

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
                self._monitor = self.curve.apply(socket)
            socket.connect(self.endpoint)
        except BaseException:
            self._socket = socket
            self._discard()
            raise
        self._socket = socket
        return socket

    def _discard(self) -> None:
        """Close the socket (and its monitor); never raises."""
        socket, monitor, self._socket, self._monitor = self._socket, self._monitor, None, None
        with contextlib.suppress(zmq.ZMQBaseError):
            if socket is not None and monitor is not None:
                socket.disable_monitor()
        for each in (monitor, socket):
            if each is not None:
                with contextlib.suppress(zmq.ZMQBaseError):
                    each.close(linger=0)

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            with fork_lock():
                if self._pid != os.getpid():
                    self._after_fork()

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's socket, lock and context, touching none of them."""
        self._socket = self._monitor = None
        self._context = None  # the child's own zmq.Context.instance() from now on
        self.lock = threading.Lock()
        self._pid = os.getpid()

    def _failed(self, exc: zmq.ZMQBaseError) -> TransportError:
        """The TransportError for a zmq exception; the socket is discarded."""
        self._discard()
        errno = getattr(exc, "errno", None)
        if errno == zmq.ETERM or (self._context is not None and self._context.closed):
            reason = "the client's ZeroMQ context was terminated"
        else:
            reason = f"ZeroMQ error: {exc}"
        return TransportError(f"{self.label}: {reason}", errno)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the transport for several calls (a pipeline's round): fork
        check, lock, and any zmq exception turned into TransportError."""
        self._check_fork()
        with self.lock:
            try:
                yield
            except zmq.ZMQBaseError as exc:
                raise self._failed(exc) from exc

    def request(self, frame: bytes, retry: bool = True) -> bytes:
        """Send ``frame`` and return the reply frame.

        Args:
            retry: False sends once only, whatever ``retries`` says.

        Raises:
            NodeUnavailableError: no reply after every attempt.
            TransportError: ZeroMQ itself failed (a terminated context...).
        """
        if self._pid != os.getpid():
            self._check_fork()
        with self.lock:
            try:
                return self._exchange(frame, retry)
            except zmq.ZMQBaseError as exc:
                raise self._failed(exc) from exc

    def _exchange(self, frame: bytes, retry: bool) -> bytes:
        """:meth:`request` without the fork check and the lock: the caller holds it."""
        attempts = 1 + (self.retries if retry else 0)
        copy = len(frame) < 65536  # zero-copy only pays off for large frames
        started = time.monotonic()
        for _ in range(attempts):
            socket = self._socket or self._open()
            try:
                socket.send(frame, copy=copy)
                return socket.recv()
            except zmq.Again:  # RCVTIMEO passed
                if self._monitor is not None:
                    self._check_handshake(started)  # a refused key: say so, do not retry
                self._discard()  # Lazy Pirate: drop the socket, and any late reply with it
            except BaseException:
                self._discard()  # an interrupted wait: never reuse a socket owed a reply
                raise
        waited = time.monotonic() - started
        raise NodeUnavailableError(
            f"no reply from {self.label} within {waited:.1f} s "
            f"({attempts} attempt{'s' if attempts != 1 else ''} of {self.timeout_s:g} s)",
            node=self.label,
            waited_s=waited,
        )

    def _check_handshake(self, started: float) -> None:
        from client.curve import handshake_failure

        assert self._monitor is not None
        failure = handshake_failure(self._monitor)
        if failure is not None:
            self._discard()
            waited = time.monotonic() - started
            raise AuthenticationError(f"{self.label}: {failure}", node=self.label, waited_s=waited)

    def close(self) -> None:
        """Close the socket; waits for a request in flight in another thread."""
        self._check_fork()
        with self.lock:
            self._discard()
