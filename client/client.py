"""The single-node client: every operation as a method, sent over a Lazy Pirate transport."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import zmq

from client.mapping import MappingSugar
from client.node import NodeSettings
from client.pool import Pool
from client.requests import Command, Request
from client.transport import Transport
from common.address import DEFAULT_PORT

if TYPE_CHECKING:
    from client.pipeline import Pipeline, Stream
    from client.stream_transport import StreamTransport
    from common.keys import KeySource

T = TypeVar("T")


class Client(NodeSettings["zmq.Context[zmq.Socket[bytes]]"], MappingSugar):
    """A connection to one memlookup node.

    Connecting::

        from client import Client

        with Client("127.0.0.1:7400", timeout_s=1.0, retries=2) as table:
            table.set("norway", "oslo")
            table.get("norway")     # 'oslo'
            table.get("sweden")     # None
            table["sweden"]         # raises KeyError

    ``node`` is ``host``, ``host:port``, ``tcp://host:port`` or
    ``[ipv6]:port``. A hostname is resolved each time a connection opens (the
    first call, and after a timeout) and its first address used, so a node
    recreated under the same name with a new address (a container, a pod) is
    found there; a name that does not resolve (a stopped container's leaves
    its network's DNS) makes the call raise :class:`NodeUnavailableError` at
    once. Nothing is sent until the first call, and a node that is down at
    construction is not an error.

    Keys and values are ``str`` (UTF-8 on the wire). The server limits their
    size (by default 1 KiB keys and 16 MiB values); the empty string is a
    value like any other, distinct from a missing key.

    The operations (``get``, ``set``, ``delete``, ``exists``, ``mget``,
    ``mset``, ``scan`` and ``keys``, ``ttl``, ``incr``, ``cas``, ``ping``,
    ``stats``) are documented on :class:`client.commands.Commands`; the same
    methods, awaitable, are :class:`client.AsyncClient`'s.

    Timeouts and retries:
        Every call waits up to ``timeout_s`` for the reply; on timeout the
        socket is closed and reopened and the request is sent again, up to
        ``retries`` more times (the ZeroMQ guide's Lazy Pirate pattern). A
        call therefore fails after about ``timeout_s * (retries + 1)``
        seconds. Retrying is safe for every operation: each write carries a
        request id, and a server that already applied it answers a retry with
        the reply it gave the first time instead of applying it again (it
        remembers the last 10,000 writes; a server with a data dir journals
        them, so also after it crashed and restarted), so ``incr`` and
        ``cas`` are never applied twice. A reply that comes after its request was given up on
        is dropped with the old socket; it is never returned for a later call.

    Error Handling:
        All errors derive from :class:`common.errors.MemlookupError`.

        * :class:`InvalidRequestError` (also a ``ValueError``): a key or value
          of the wrong type, over the server's limits, a bad TTL, ``nx`` with
          ``xx``. Nothing was changed. The client stays usable.
        * :class:`NotAnIntegerError`: ``incr`` on a value that is not an
          integer. Nothing was changed.
        * :class:`OutOfMemoryError`: the server is full and may not evict.
          The write was not applied; reads still work.
        * :class:`PersistenceError`: the server could not make the write
          durable and did not apply it.
        * :class:`ServerError`: any other refusal (``INTERNAL`` means a bug).
        * :class:`NodeUnavailableError`: no reply after every attempt. The
          node is down, unreachable or overloaded; a write may or may not
          have been applied. The client stays usable and reconnects on the
          next call, so the same object works again once the node is back.
          Two subclasses mean nothing was sent: :class:`NotListeningError`
          (the connection was refused: nothing listens at the address) and
          :class:`AuthenticationError` (the server ended the handshake).
        * :class:`TransportError`: this process's ZeroMQ failed, most often
          because the ``context`` the client was given was terminated. A
          write may or may not have been applied. No ``zmq`` exception
          leaves the client.

    Threads and processes:
        One Client may be shared by threads. Each call borrows a connection
        of its own from the client's pool (:mod:`client.pool`) and gives it
        back, so calls from several threads are in flight at once and one
        thread's timeout never holds up another's call; up to 32 idle
        connections are kept between calls. Borrowing costs less than a
        microsecond against a round trip of tens (``bench/shared_client.py``).
        After ``os.fork()``, a Client used in the child notices (its process
        id changed) and opens its own connections, in the child's own ZeroMQ
        context, without touching the parent's; parent and child both go on
        using the same object, and the child's writes get request ids of
        their own.

    Many commands at once:
        :meth:`pipeline` queues commands and sends them together;
        :meth:`stream` sends them as they are given and hands each result to
        a callback (bulk loading). Both keep many requests in flight on one
        connection of their own (:mod:`client.pipeline`).

    Args:
        node: the node's address.
        timeout_s: seconds to wait for each attempt.
        retries: resends after the first attempt times out.
        context: a ZeroMQ context to share; the process-wide one by default.
        server_key: the server's CurveZMQ public key (its ``.key`` file, or
            the 40-character key itself): encrypt the connection and make
            sure it is that server. Needed for a server run with
            ``--curve-secret-key``.
        client_key: our key pair (a ``.key_secret`` file from
            ``memlookup-keygen``), for a server that accepts only the keys in
            its ``--authorized-keys``. Without it an ephemeral pair is used.
        wait_for_ready: True (the default): a node that refuses the
            connection (not started yet, or restarting) is waited for, up to
            ``timeout_s`` per attempt and ``retries``; then
            :class:`common.errors.NotListeningError` is raised. False: a
            refused connection raises it at once (the CLI's choice).

    Raises:
        ValueError: ``node`` is not an address,
            ``timeout_s`` is not positive, ``retries`` is negative, or a key
            file cannot be read.

    A server that ends the handshake -- its access policy refuses our address
    or our key, or its key is not ``server_key`` -- makes a call raise
    :class:`common.errors.AuthenticationError` (a
    :class:`NodeUnavailableError`) at once, without retrying; its message
    says which.
    """

    def __init__(
        self,
        node: str,
        timeout_s: float = 1.0,
        retries: int = 2,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        default_port: int = DEFAULT_PORT,
        server_key: KeySource | None = None,
        client_key: KeySource | None = None,
        wait_for_ready: bool = True,
    ) -> None:
        super().__init__(node, timeout_s, retries, context, default_port, server_key, client_key, wait_for_ready)
        self._transports: Pool[Transport] = Pool(self._new_transport)
        #: Pipeline connections, pooled per window (messages in flight).
        self._stream_pools: dict[int, Pool[StreamTransport]] = {}

    # -- sending -----------------------------------------------------------------

    def _execute(self, command: Command[T], *args: Any, **options: Any) -> T:
        return self._call(command, command.frame(args, options, self._rids))

    def _send(self, request: Request[T]) -> T:
        """Send a request checked already (a cluster's); its result."""
        return self._call(request.command, self._rids.frame(request))

    def _call(self, command: Command[T], frame: bytes) -> T:
        """Send ``frame`` in lockstep (Lazy Pirate) on a connection of the pool; ``command``'s result."""
        transports = self._transports
        lease = transports.take()
        try:
            reply = lease[1].request(frame)
        finally:
            transports.give(lease)
        return command.parse(reply)

    def _new_transport(self) -> Transport:
        return Transport(self.endpoint, self._timeout_s, self._retries, self._context_here(), label=self.node,
                         curve=self._curve, wait_for_ready=self._wait_for_ready)

    @contextlib.contextmanager
    def _stream(self, window_messages: int) -> Iterator[StreamTransport]:
        """A pipeline connection keeping ``window_messages`` messages in flight,
        lent for one round (or one stream)."""
        pool = self._stream_pools.get(window_messages)
        if pool is None:
            from client.stream_transport import StreamTransport

            def new_stream() -> StreamTransport:
                return StreamTransport(self.endpoint, self._timeout_s, self._retries, window_messages,
                                       self._context_here(), self.node, curve=self._curve)

            pool = self._stream_pools.setdefault(window_messages, Pool(new_stream))
        lease = pool.take()
        try:
            yield lease[1]
        finally:
            pool.give(lease)

    # -- many commands at once -----------------------------------------------------

    def pipeline(self, window: int | None = None, per_message: int | None = None) -> Pipeline:
        """A :class:`client.pipeline.Pipeline`: queue commands, send them together.

        Args:
            window: most commands in flight at once (default 256).
            per_message: commands packed into one ``batch`` message (default 16).
        """
        from client.pipeline import Pipeline

        return Pipeline(self, *self._window_messages(window, per_message))

    def stream(
        self, on_result: Callable[[Any], object], window: int | None = None, per_message: int | None = None
    ) -> Stream:
        """A :class:`client.pipeline.Stream`: send commands as they are given, many in
        flight; each result (or refusal) goes to ``on_result``, in order.

        Args:
            on_result: called with each command's result -- what the Client
                method would have returned -- or the
                :class:`common.errors.MemlookupError` the server's reply stands for.
            window: most commands in flight at once (default 256).
            per_message: commands packed into one ``batch`` message (default
                16); 1 sends each command the moment it is given.
        """
        from client.pipeline import Stream

        return Stream(self, on_result, *self._window_messages(window, per_message))

    # -- closing -------------------------------------------------------------------

    def close_pipeline(self) -> None:
        """Close the pipelines' connections (one in use closes when its round ends)."""
        for pool in list(self._stream_pools.values()):
            pool.close()

    def close(self) -> None:
        """Close the sockets (one in use closes when its call ends). The client reconnects if used again."""
        self._transports.close()
        self.close_pipeline()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
