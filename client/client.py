"""The single-node client: one method per operation, over a Lazy Pirate transport."""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import zmq

from client.mapping import MappingSugar
from client.pool import Pool, fork_lock
from client.transport import Transport
from common.address import DEFAULT_PORT, node_endpoints
from common.errors import (
    InvalidRequestError,
    NotAnIntegerError,
    OutOfMemoryError,
    PersistenceError,
    ServerError,
)
from common.protocol import ProtocolError, Status, decode_reply, encode_request

if TYPE_CHECKING:
    from common.keys import KeySource

_ERRORS: dict[int, type[ServerError]] = {
    Status.NOT_INTEGER: NotAnIntegerError,
    Status.OUT_OF_MEMORY: OutOfMemoryError,
    Status.PERSISTENCE: PersistenceError,
}
_CALLER_MISTAKES = frozenset(
    {
        Status.BAD_REQUEST,
        Status.UNKNOWN_OP,
        Status.WRONG_ARITY,
        Status.TOO_LARGE,
        Status.UNSUPPORTED_VERSION,
        Status.BAD_CURSOR,
    }
)


class Client(MappingSugar):
    """A connection to one memlookup node.

    Connecting::

        from client import Client

        with Client("127.0.0.1:7400", timeout_s=1.0, retries=2) as table:
            table.set("norway", "oslo")
            table.get("norway")     # 'oslo'
            table.get("sweden")     # None
            table["sweden"]         # raises KeyError

    ``node`` is ``host``, ``host:port``, ``tcp://host:port`` or
    ``[ipv6]:port``; a hostname is resolved once, here, and the first address
    is used. Nothing is sent until the first call, and a node that is down at
    construction is not an error.

    Keys and values are ``str`` (UTF-8 on the wire). The server limits their
    size (by default 1 KiB keys and 16 MiB values); the empty string is a
    value like any other, distinct from a missing key.

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
          of the wrong type, over the server's limits, a bad TTL. Nothing
          was changed. The client stays usable.
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
        context: zmq.Context | None = None,
        default_port: int = DEFAULT_PORT,
        server_key: "KeySource | None" = None,
        client_key: "KeySource | None" = None,
        wait_for_ready: bool = True,
    ) -> None:
        self.node = node
        self.endpoint = node_endpoints(node, default_port)[0]
        curve = None
        if server_key is not None or client_key is not None:
            from client.curve import CurveKeys  # only secured clients pay for its imports

            curve = CurveKeys.from_options(server_key, client_key)
        self._curve = curve
        self._wait_for_ready = wait_for_ready
        self._timeout_s, self._retries = timeout_s, retries
        self._context = context  # for sockets of this process; a forked child uses its own
        self._context_pid = os.getpid()
        #: (client id, sequence) for request ids; replaced in a forked child,
        #: whose writes must not reuse the parent's ids.
        self._rid_source = (os.urandom(8).hex(), itertools.count(1))
        self._pid = os.getpid()
        self._transports: Pool[Transport] = Pool(self._new_transport)
        #: Pipeline connections, pooled per window (messages in flight).
        self._stream_pools: dict[int, Pool[Any]] = {}

    # -- plumbing --------------------------------------------------------------

    def _call(self, op: str, *args: Any, options: dict[str, Any] | None = None, write: bool = False) -> Any:
        frame = self._encode(op, args, options, write)
        transports = self._transports
        lease = transports.take()
        try:
            reply = lease[1].request(frame)
        finally:
            transports.give(lease)
        return self._payload(reply)

    def _new_transport(self) -> Transport:
        return Transport(self.endpoint, self._timeout_s, self._retries, self._context_here(), label=self.node,
                         curve=self._curve, wait_for_ready=self._wait_for_ready)

    def _context_here(self) -> zmq.Context | None:
        """The context we were given, in the process that gave it; None
        (the process's own ``zmq.Context.instance()``) in a forked child."""
        return self._context if self._context_pid == os.getpid() else None

    @contextlib.contextmanager
    def _stream(self, window_messages: int) -> Iterator[Any]:
        """A pipeline connection keeping ``window_messages`` messages in flight,
        lent for one round (or one bulk load): a :class:`client.pipeline.StreamTransport`."""
        pool = self._stream_pools.get(window_messages)
        if pool is None:
            from client.pipeline import StreamTransport

            def new_stream() -> StreamTransport:
                return StreamTransport(self.endpoint, self._timeout_s, self._retries, window_messages,
                                       self._context_here(), self.node, curve=self._curve)

            pool = self._stream_pools.setdefault(window_messages, Pool(new_stream))
        lease = pool.take()
        try:
            yield lease[1]
        finally:
            pool.give(lease)

    def _encode(self, op: str, args: tuple[Any, ...], options: dict[str, Any] | None, write: bool) -> bytes:
        """The request frame; a write gets a request id, so that resending it is safe."""
        if write:
            if self._pid != os.getpid():
                self._renew_after_fork()
            client_id, sequence = self._rid_source
            rid = f"{client_id}:{next(sequence)}"
            options = {**options, "rid": rid} if options else {"rid": rid}
        return encode_request(op, *args, options=options)

    def _renew_after_fork(self) -> None:
        """In a forked child: a new client id, or parent and child would send
        the same request ids and the server would answer one with the other's reply."""
        with fork_lock():
            if self._pid != os.getpid():
                self._rid_source = (os.urandom(8).hex(), itertools.count(1))
                self._pid = os.getpid()

    @classmethod
    def _payload(cls, frame: bytes) -> Any:
        """The result in a reply frame, or the error it carries, raised."""
        return cls._parse(frame)[1]

    @classmethod
    def _parse(cls, frame: bytes) -> tuple[int, Any]:
        try:
            status, payload = decode_reply(frame)
        except ProtocolError as exc:
            raise ServerError(str(exc), Status.INTERNAL) from None
        return status, cls._result(status, payload)

    @staticmethod
    def _result(status: int, payload: Any) -> Any:
        """The payload of a success; the error a refusal stands for, raised."""
        if status != Status.OK:
            message = str(payload)
            if status in _CALLER_MISTAKES:
                raise InvalidRequestError(message, status)
            raise _ERRORS.get(status, ServerError)(message, status)
        return payload

    @staticmethod
    def _check_str(what: str, value: Any) -> None:
        if not isinstance(value, str):
            raise InvalidRequestError(f"{what} must be a str, not {type(value).__name__}")

    @staticmethod
    def _write_options(ttl_s: float | None, **flags: bool) -> dict[str, Any]:
        options: dict[str, Any] = {name: True for name, on in flags.items() if on}
        if ttl_s is not None:
            if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not ttl_s > 0:
                raise InvalidRequestError(f"ttl_s must be a positive number of seconds, not {ttl_s!r}")
            options["ttl_s"] = ttl_s
        return options

    def pipeline(self, window: int | None = None, per_message: int | None = None) -> Any:
        """A :class:`client.pipeline.Pipeline`: queue commands, send them together.

        Args:
            window: most commands in flight at once (default 256).
            per_message: commands packed into one ``batch`` message (default 16).
        """
        from client.pipeline import DEFAULT_PER_MESSAGE, DEFAULT_WINDOW, Pipeline

        per_message = per_message or DEFAULT_PER_MESSAGE
        return Pipeline(self, max(1, (window or DEFAULT_WINDOW) // per_message), per_message)

    def close_pipeline(self) -> None:
        """Close the pipelines' connections (one in use closes when its round ends)."""
        for pool in list(self._stream_pools.values()):
            pool.close()

    def close(self) -> None:
        """Close the sockets (one in use closes when its call ends). The client reconnects if used again."""
        self._transports.close()
        self.close_pipeline()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.node!r}, endpoint={self.endpoint!r})"

    # -- operations ------------------------------------------------------------

    def ping(self) -> bool:
        """True when the node answers (raises :class:`NodeUnavailableError` otherwise)."""
        return self._call("ping") == "PONG"

    def get(self, key: str) -> str | None:
        """The value stored under ``key``, or None if there is none."""
        self._check_str("key", key)
        return self._call("get", key)

    def set(
        self, key: str, value: str, ttl_s: float | None = None, nx: bool = False, xx: bool = False
    ) -> bool:
        """Store ``value`` under ``key``.

        Args:
            ttl_s: expire the key after this many seconds (None: never; a set
                without it removes any earlier expiry).
            nx: only if the key does not exist.
            xx: only if the key exists.

        Returns:
            True if stored, False if ``nx``/``xx`` prevented it.
        """
        self._check_str("key", key)
        self._check_str("value", value)
        if ttl_s is None and not nx and not xx:  # the common case, without building options
            return self._call("set", key, value, write=True)
        return self._call("set", key, value, options=self._write_options(ttl_s, nx=nx, xx=xx), write=True)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        self._check_str("key", key)
        return self._call("del", key, write=True)

    def exists(self, key: str) -> bool:
        self._check_str("key", key)
        return self._call("exists", key)

    def mget(self, keys: Sequence[str]) -> list[str | None]:
        """The values of ``keys``, in order, None for each missing one."""
        keys = list(keys)
        for key in keys:
            self._check_str("key", key)
        return self._call("mget", keys)

    def mset(self, pairs: Mapping[str, str], ttl_s: float | None = None) -> None:
        """Store every pair at once: all are stored, or none (on any error)."""
        pairs = dict(pairs)
        for key, value in pairs.items():
            self._check_str("key", key)
            self._check_str("value", value)
        self._call("mset", pairs, options=self._write_options(ttl_s), write=True)

    def scan(self, cursor: int = 0, pattern: str = "*", count: int | None = None) -> tuple[int, list[str]]:
        """One page of keys matching the glob ``pattern``.

        Start with cursor 0 and pass each returned cursor back until it is 0
        again. A key that exists for the whole scan is returned exactly once;
        keys added or removed meanwhile may or may not be. ``count`` is a hint
        (None: ``common.limits.DEFAULT_SCAN_COUNT``, 1000). Cursors are valid
        only within one run of the server.
        """
        self._check_str("pattern", pattern)
        if count is None:
            from common.limits import DEFAULT_SCAN_COUNT as count  # lazily: CLI start-up time
        next_cursor, keys = self._call("keys", pattern, cursor, count)
        return next_cursor, keys

    def keys(self, pattern: str = "*", count: int | None = None) -> Iterator[str]:
        """Every key matching the glob ``pattern`` (``*``, ``?``, ``[abc]``, ``[!abc]``), page by page."""
        cursor = 0
        while True:
            cursor, page = self.scan(cursor, pattern, count)
            yield from page
            if cursor == 0:
                return

    def ttl(self, key: str) -> float:
        """Seconds until ``key`` expires; -1 if it never does, -2 if it does not exist."""
        self._check_str("key", key)
        return self._call("ttl", key)

    def incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to the decimal integer at ``key`` (a missing key counts as 0).

        Raises:
            NotAnIntegerError: the value is not an integer, or the result
                leaves the 64-bit signed range.
        """
        self._check_str("key", key)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise InvalidRequestError(f"delta must be an int, not {type(delta).__name__}")
        return self._call("incr", key, delta, write=True)

    def cas(self, key: str, expected: str, value: str, ttl_s: float | None = None) -> bool:
        """Compare-and-set: store ``value`` only if the current value is ``expected``.

        Like ``set``, a swap without ``ttl_s`` leaves the key with no expiry.

        Returns:
            True if stored; False if the key is missing or holds something else.
        """
        self._check_str("key", key)
        self._check_str("expected", expected)
        self._check_str("value", value)
        return self._call("cas", key, expected, value, options=self._write_options(ttl_s), write=True)

    def stats(self) -> dict[str, Any]:
        """The node's counters: keys, memory, operations, uptime, version, limits."""
        return self._call("stats")
