"""Many commands in flight on one connection: pipelines and streams.

A lockstep client waits one round trip per request. A pipeline sends up to
``window`` requests before it waits for the first reply, so the round trips
overlap and the server answers them in batches. Two ways to use it:

* :class:`Pipeline` (``client.pipeline()``): queue commands, then
  :meth:`~Pipeline.execute` sends them all and returns their results.
* :class:`Stream` (``client.stream(on_result)``): each command is sent as it
  is given (once the window has room), and each result is handed to a
  callback, in order -- for input too long to queue whole (``memlookup
  --pipe``, the bulk loader; the benchmark's pipelined load).

Commands are packed ``per_message`` to a ``batch`` message (one alone goes as
itself), and a batch reply is spread over its commands (:class:`Outbox`, no
I/O). The connection, its window, retries and why it never reconnects by
itself: :mod:`client.stream_transport`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from client.commands_pipeline import PipelineCommands
from client.requests import Command, RequestIds, payload
from client.stream_transport import MAX_WINDOW_MESSAGES, OnReply, StreamTransport
from common.errors import MemlookupError, ServerError
from common.protocol import Status, encode_batch

if TYPE_CHECKING:
    from typing_extensions import Self

    from client.client import Client

T = TypeVar("T")

#: Most bytes of requests packed into one message: large values go alone,
#: so a batch never nears the server's message size limit.
PACK_BYTES = 1 << 20

#: Called with each command's result, or the MemlookupError its reply stands for.
OnResult = Callable[[Any], object]


# -- packing commands into messages, and replies back into results (no I/O) ---------------


class Outbox:
    """Packs request frames into messages and spreads each reply over its commands.

    A message holds at most ``per_message`` commands and :data:`PACK_BYTES`
    of them (a larger one goes alone); one command goes as itself, more as a
    ``batch``. Each command's result -- what the client method returns -- or
    the :class:`MemlookupError` its reply stands for goes to ``on_result``,
    in the order the commands were added.
    """

    def __init__(self, per_message: int, on_result: OnResult) -> None:
        self._per_message = per_message
        self._on_result = on_result
        self._frames: list[bytes] = []
        self._commands: list[Command[Any]] = []
        self._size = 0

    def add(self, frame: bytes, command: Command[Any]) -> list[tuple[bytes, OnReply]]:
        """Add a command's frame; the messages now ready to send, with their reply handlers."""
        ready = []
        if self._frames and self._size + len(frame) > PACK_BYTES:
            ready.append(self._take())
        self._frames.append(frame)
        self._commands.append(command)
        self._size += len(frame)
        if len(self._frames) >= self._per_message:
            ready.append(self._take())
        return ready

    def flush(self) -> tuple[bytes, OnReply] | None:
        """The message being filled, to be sent now (None if it is empty)."""
        return self._take() if self._frames else None

    def _take(self) -> tuple[bytes, OnReply]:
        frames, commands = self._frames, self._commands
        self._frames, self._commands, self._size = [], [], 0
        if len(frames) == 1:
            return frames[0], self._one(commands[0])
        return encode_batch(frames), self._batch(commands)

    def _one(self, command: Command[Any]) -> OnReply:
        on_result = self._on_result

        def on_reply(frame: bytes) -> None:
            try:
                value = command.parse(frame)
            except MemlookupError as exc:
                value = exc
            on_result(value)

        return on_reply

    def _batch(self, commands: list[Command[Any]]) -> OnReply:
        on_result = self._on_result

        def on_reply(frame: bytes) -> None:
            try:
                items = payload(frame)
                if not isinstance(items, list) or len(items) != len(commands):
                    raise ServerError(f"batch reply with {len(items) if isinstance(items, list) else 'no'} items "
                                      f"for {len(commands)} requests", Status.INTERNAL)
            except MemlookupError as exc:  # the whole batch was refused
                for _ in commands:
                    on_result(exc)
                return
            for command, item in zip(commands, items, strict=True):
                try:
                    value = command.value(item[0], item[1])
                except MemlookupError as exc:
                    value = exc
                except (TypeError, IndexError, KeyError):
                    value = ServerError(f"garbled item in a batch reply: {item!r:.64}", Status.INTERNAL)
                on_result(value)

        return on_reply


# -- the two faces ---------------------------------------------------------------------


class QueuedCommands(PipelineCommands):
    """Commands queued as frames (checked, writes given their request ids) for a pipeline to send.

    What :class:`Pipeline` and :class:`client.AsyncPipeline` share; they differ
    only in how :meth:`execute` waits.
    """

    def __init__(self, rids: RequestIds, window_messages: int, per_message: int) -> None:
        self._rids = rids
        self._window_messages = window_messages
        self._per_message = per_message
        self._queued: list[tuple[bytes, Command[Any]]] = []
        #: The results of the last ``execute`` (or of the ``with`` block).
        self.results: list[Any] = []

    def _execute(self, command: Command[T], *args: Any, **options: Any) -> Self:
        self._queued.append((command.frame(args, options, self._rids), command))
        return self

    def __len__(self) -> int:
        return len(self._queued)

    def _take(self) -> tuple[list[tuple[bytes, Command[Any]]], list[Any], Outbox]:
        """The queued commands (the queue is emptied), the list their results go to, and their outbox."""
        queued, self._queued = self._queued, []
        results: list[Any] = []
        return queued, results, Outbox(self._per_message, results.append)

    def _finish(self, results: list[Any], raise_on_error: bool) -> list[Any]:
        self.results = results
        if raise_on_error:
            for result in results:
                if isinstance(result, MemlookupError):
                    raise result
        return results


class Pipeline(QueuedCommands):
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

    Commands are the client's own (every method of
    :class:`client.commands.Commands` but ``keys``), checked the same way
    when queued; each returns the pipeline, so calls can be chained, and its
    result is what the Client method returns. They run in the order queued,
    each on its own -- a pipeline is not a transaction: other clients'
    requests may run between them.

    Errors: a command the server refuses does not stop the others. With
    ``raise_on_error`` (the default) :meth:`execute` raises the first such
    error after every command has run; otherwise the exception object takes
    that command's place in the results. If the node stops answering,
    :class:`NodeUnavailableError` is raised after ``retries`` resends of the
    unanswered commands; then any of them may or may not have been applied.
    See :mod:`client.stream_transport` for why resending writes is safe.

    Threads: a Pipeline object belongs to the thread that fills it (as in
    redis-py). Pipelines of one Client in several threads never share a
    connection: each :meth:`execute` takes one of the Client's pipeline
    connections (see :mod:`client.pool`) and gives it back at the end.
    """

    def __init__(self, client: Client, window_messages: int, per_message: int) -> None:
        super().__init__(client._rids, window_messages, per_message)
        self._client = client

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send every queued command and return their results, in order.

        Commands go ``per_message`` to a ``batch`` message (one alone as
        itself), up to the window in flight.
        """
        queued, results, outbox = self._take()
        with self._client._stream(self._window_messages) as transport:
            for frame, command in queued:
                for message in outbox.add(frame, command):
                    transport.submit(*message)
            last = outbox.flush()
            if last is not None:
                transport.submit(*last)
            transport.drain()
        return self._finish(results, raise_on_error)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.execute()
        else:
            self._queued.clear()


class Stream(PipelineCommands):
    """Commands sent as they are given, many in flight; each result to a callback, in order.

    Made by :meth:`client.Client.stream`; for input too long to queue whole
    (``memlookup --pipe``, the benchmark's pipelined load)::

        done = []
        with table.stream(done.append, window=64, per_message=1) as stream:
            for key, value in pairs_from_somewhere():
                stream.set(key, value)
        # here every command has been answered: done == [True, True, ...]

    Commands: every method of :class:`client.commands.Commands` but
    ``keys``, with the Client's arguments and checks. Each call sends its
    command (with ``per_message`` > 1, once the message it is packed into is
    full) and returns the stream; while ``window`` commands are unanswered
    it first waits for the oldest reply. A bad argument raises
    :class:`InvalidRequestError` from the call itself, and nothing is sent.

    Results: ``on_result`` is called once per command, in the order the
    commands were given, with what the Client method would have returned, or
    with the :class:`MemlookupError` the server's reply stands for (the
    stream goes on). It runs during a later command's call, :meth:`flush` or
    :meth:`drain`. Since the order is kept, a caller that needs to know which
    command a result belongs to keeps its own queue of them (as
    ``client/bulk.py`` keeps line numbers).

    Ending: :meth:`drain` sends what is packed and waits for every reply; the
    ``with`` block drains at its end, or, when it ends by an exception,
    abandons what is in flight. :meth:`close` gives the connection back to
    the Client. If the node stops answering, :class:`NodeUnavailableError`
    is raised (after ``retries`` resends) and the unanswered commands get no
    result: they may or may not have been applied. An exception raised by
    ``on_result`` propagates from the call that was waiting, and likewise
    abandons the commands still in flight; the stream stays usable.

    A Stream belongs to one thread, like a :class:`Pipeline`.
    """

    def __init__(self, client: Client, on_result: OnResult, window_messages: int, per_message: int) -> None:
        self._client = client
        self._window_messages = window_messages
        self._outbox = Outbox(per_message, on_result)
        self._lease = contextlib.ExitStack()
        self._transport: StreamTransport | None = None

    @property
    def window(self) -> int:
        """Most messages in flight at once: ``window // per_message``, at most :data:`MAX_WINDOW_MESSAGES`."""
        return min(self._window_messages, MAX_WINDOW_MESSAGES)

    def _connection(self) -> StreamTransport:
        if self._transport is None:
            self._transport = self._lease.enter_context(self._client._stream(self._window_messages))
        return self._transport

    def _execute(self, command: Command[T], *args: Any, **options: Any) -> Self:
        frame = command.frame(args, options, self._client._rids)
        for message in self._outbox.add(frame, command):
            self._connection().submit(*message)
        return self

    def flush(self) -> None:
        """Send the message being packed now, without waiting for it to fill."""
        message = self._outbox.flush()
        if message is not None:
            self._connection().submit(*message)

    def drain(self) -> None:
        """Send what is packed and wait until every command has its result."""
        self.flush()
        if self._transport is not None:
            self._transport.drain()

    def close(self) -> None:
        """Give the connection back to the Client. Commands not drained get no
        result: those in flight are abandoned, those packed are never sent."""
        self._outbox.flush()
        transport, self._transport = self._transport, None
        if transport is not None:
            if transport.unanswered:
                transport.abandon()
            self._lease.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None:
                self.drain()
        finally:
            self.close()
