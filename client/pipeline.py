"""Many requests in flight on one connection: the pipeline API and its transport.

A lockstep client waits one round trip per request. A pipeline sends up to
``window`` requests before it waits for the first reply, so the round trips
overlap and the server answers them in batches.

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
window well below that). Reads are simply asked again.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Deque, Iterator, Mapping

import zmq

from client.transport import Transport
from common.errors import MemlookupError, NodeUnavailableError, ServerError, TransportError
from common.limits import MAX_QUEUED_MESSAGES
from common.protocol import Status, encode_batch

from client.client import Client

#: Commands a pipeline keeps in flight by default.
DEFAULT_WINDOW = 256

#: Commands packed into one ``batch`` message by default: the server pays
#: its per-message socket cost once for all of them.
DEFAULT_PER_MESSAGE = 16

#: Most bytes of requests packed into one message: large values go alone,
#: so a batch never nears the server's message size limit.
PACK_BYTES = 1 << 20

#: Most messages in flight on one connection: half the replies the server
#: queues per connection (more could be dropped, and the order broken; ZeroMQ's
#: high-water marks are approximate, hence the half).
MAX_WINDOW_MESSAGES = MAX_QUEUED_MESSAGES // 2

_NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq's enum costs a Python call per use

#: Called with each reply frame, in the order the requests were submitted.
OnReply = Callable[[bytes], None]


class StreamTransport(Transport):
    """A DEALER socket that keeps up to ``window`` requests in flight.

    :meth:`submit` sends at once while fewer than ``window`` requests are
    unanswered (at most :data:`MAX_WINDOW_MESSAGES`), otherwise it first
    waits for the oldest reply; :meth:`drain` waits for all. Every reply is
    handed to the callback given with its request, in submission order. One
    thread at a time, as a :class:`Transport`: a Client lends one to each
    :meth:`Pipeline.execute`. ``timeout_s`` is how long to wait for the next
    reply before resending; ``retries`` how many times in a row to reopen
    and resend before giving up. Other arguments as :class:`Transport`.
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
        window: int = DEFAULT_WINDOW,
        context: zmq.Context | None = None,
        label: str = "",
        curve: Any = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        super().__init__(endpoint, timeout_s, retries, context, label, curve)
        self.window = min(window, MAX_WINDOW_MESSAGES)
        #: Unanswered requests, oldest first: (frame, on_reply).
        self._in_flight: Deque[tuple[bytes, OnReply]] = collections.deque()

    @staticmethod
    def _send(socket: zmq.Socket, frame: bytes) -> bool:
        """False when the socket has lost its connection (it would block: it never reconnects)."""
        try:
            socket.send(frame, _NOBLOCK, copy=len(frame) < 65536)
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

    def drain(self) -> None:
        """Wait until every submitted request has been answered."""
        try:
            while self._in_flight:
                self._receive_one()
        except zmq.ZMQBaseError as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: zmq.ZMQBaseError) -> TransportError:
        self._in_flight.clear()  # unanswered, and never will be on a new socket
        return super()._failed(exc)

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
                    break
                self._resend_all()
                continue
            self._in_flight.popleft()[1](reply)
            return
        self._discard()
        lost = len(self._in_flight)
        self._in_flight.clear()
        waited = time.monotonic() - started
        raise NodeUnavailableError(
            f"no reply from {self.label} within {waited:.1f} s "
            f"({failures} attempts of {self.timeout_s:g} s); {lost} pipelined requests "
            "unanswered: their writes may or may not have been applied",
            node=self.label,
            waited_s=waited,
        )

    def _resend_all(self) -> None:
        """Lazy Pirate for a stream: a new socket, every unanswered request again."""
        self._discard()
        socket = self._open()
        for frame, _ in self._in_flight:
            if not self._send(socket, frame):
                return  # not connected yet after all: the wait times out and comes back here


class Pipeline:
    """Queue commands, then send them all at once with :meth:`execute`.

    ::

        with table.pipeline() as p:
            p.set("a", "1")
            p.incr("hits")
            p.get("a")
        p.results            # [True, 1, '1']

        p = table.pipeline()
        p.set("b", "2").get("b")
        p.execute()          # [True, '2']

    Commands are the client's own (``get``, ``set``, ``delete``, ``exists``,
    ``mget``, ``mset``, ``ttl``, ``incr``, ``cas``, ``ping``), checked the
    same way when queued; each returns the pipeline, so calls can be chained.
    They run in the order queued, each on its own -- a pipeline is not a
    transaction: other clients' requests may run between them.

    Errors: a command the server refuses does not stop the others. With
    ``raise_on_error`` (the default) :meth:`execute` raises the first such
    error after every command has run; otherwise the exception object takes
    that command's place in the results. If the node stops answering,
    :class:`NodeUnavailableError` is raised after ``retries`` resends of the
    unanswered commands; then any of them may or may not have been applied.
    See :mod:`client.pipeline` for why resending writes is safe.

    Threads: a Pipeline object belongs to the thread that fills it (as in
    redis-py). Pipelines of one Client in several threads never share a
    connection: each :meth:`execute` takes one of the Client's pipeline
    connections (see :mod:`client.pool`) and gives it back at the end.
    """

    def __init__(self, client: Client, window_messages: int, per_message: int = DEFAULT_PER_MESSAGE) -> None:
        self._client = client
        self._window_messages = window_messages
        self._per_message = per_message
        self._queued: list[tuple[bytes, Callable[[bytes], Any]]] = []  # (frame, decode)
        #: The results of the last :meth:`execute` (or of the ``with`` block).
        self.results: list[Any] = []

    def _call(self, op: str, *args: Any, options: dict[str, Any] | None = None, write: bool = False) -> "Pipeline":
        self._queued.append((self._client._encode(op, args, options, write), self._client._payload))
        return self

    # The client's commands, reused as they are: they check their arguments
    # and end in ``self._call``, which here queues instead of sending.
    _check_str = staticmethod(Client._check_str)
    _write_options = staticmethod(Client._write_options)
    get = Client.get
    set = Client.set
    delete = Client.delete
    exists = Client.exists
    mget = Client.mget
    ttl = Client.ttl
    incr = Client.incr
    cas = Client.cas

    def mset(self, pairs: Mapping[str, str], ttl_s: float | None = None) -> "Pipeline":
        self._client.mset.__func__(self, pairs, ttl_s)  # type: ignore[attr-defined]
        return self

    def ping(self) -> "Pipeline":
        return self._call("ping")

    def __len__(self) -> int:
        return len(self._queued)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send every queued command and return their results, in order.

        Commands go ``per_message`` to a ``batch`` message (one alone as
        itself), up to the window in flight.
        """
        queued, self._queued = self._queued, []
        results: list[Any] = [None] * len(queued)
        with self._client._stream(self._window_messages) as transport:
            for start, frames in _chunks([frame for frame, _ in queued], self._per_message):
                if len(frames) == 1:
                    transport.submit(frames[0], _store_one(results, start))
                else:
                    transport.submit(encode_batch(frames), _store_batch(results, start, len(frames)))
            transport.drain()
        self.results = results
        if raise_on_error:
            for result in results:
                if isinstance(result, MemlookupError):
                    raise result
        return results

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.execute()
        else:
            self._queued.clear()


def _chunks(frames: list[bytes], per_message: int) -> Iterator[tuple[int, list[bytes]]]:
    """``(first index, frames)`` for each message: at most ``per_message``
    frames and PACK_BYTES together; a larger frame goes alone."""
    start, chunk, size = 0, [], 0
    for index, frame in enumerate(frames):
        if chunk and (len(chunk) >= per_message or size + len(frame) > PACK_BYTES):
            yield start, chunk
            start, chunk, size = index, [], 0
        chunk.append(frame)
        size += len(frame)
    if chunk:
        yield start, chunk


def _store_one(results: list[Any], index: int) -> OnReply:
    def on_reply(frame: bytes) -> None:
        try:
            results[index] = Client._payload(frame)
        except MemlookupError as exc:
            results[index] = exc

    return on_reply


def _store_batch(results: list[Any], start: int, count: int) -> OnReply:
    """Spread a batch reply's item replies over ``results[start:start + count]``."""
    def on_reply(frame: bytes) -> None:
        try:
            items = Client._payload(frame)
            if not isinstance(items, list) or len(items) != count:
                raise ServerError(f"batch reply with {len(items) if isinstance(items, list) else 'no'} items "
                                  f"for {count} requests", Status.INTERNAL)
        except MemlookupError as exc:  # the whole batch was refused
            results[start:start + count] = [exc] * count
            return
        for index, item in enumerate(items, start):
            try:
                results[index] = Client._result(item[0], item[1])
            except MemlookupError as exc:
                results[index] = exc
            except (TypeError, IndexError, KeyError):
                results[index] = ServerError(f"garbled item in a batch reply: {item!r:.64}", Status.INTERNAL)

    return on_reply
