"""The socket loop: receive requests, hand them to the Handler, send replies.

One ROUTER socket, which speaks to REQ clients exactly as a REP socket would
(every request arrives as ``[identity..., b"", body]``), but lets the loop take
every request that is ready at once: they are answered as one batch, so work
that can be shared across requests (an fsync, say) is done once per batch.
A batch ends after :data:`MAX_BATCH_S` or once its large replies reach the
reply limit, so the loop answers everyone, and notices a stop, often. Large
replies are counted until they leave (server/output.py).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import zmq

from common import limits
from common.address import endpoint
from common.protocol import Status, encode_reply
from server.config import ServerConfig
from server.output import LargeReply, OutputQueue, source_fd

log = logging.getLogger(__name__)

#: Most requests taken from the socket before the batch is answered.
MAX_BATCH_REQUESTS = 256

#: How long the loop waits for a request before doing its periodic work, and
#: so the longest a stop signal waits to be noticed when idle.
POLL_INTERVAL_S = 0.05

#: After this long, a batch takes no more requests and is answered. With
#: each request's own work bounded (a ``keys`` page stops after
#: ``KEYS_SLICE_S``), this bounds how long others and a stop signal wait.
MAX_BATCH_S = 0.01

#: How long a stopping server goes on answering requests that already arrived.
STOP_DRAIN_S = 0.6

#: How long close() waits for the last replies to leave. With STOP_DRAIN_S
#: and MAX_BATCH_S, a stop signal is obeyed within a second.
LINGER_MS = 200


# Plain ints: pyzmq's enum flags cost a Python call per use on the hot path.
_NOBLOCK, _SNDMORE, _EVENTS, _POLLIN = int(zmq.NOBLOCK), int(zmq.SNDMORE), int(zmq.EVENTS), int(zmq.POLLIN)
_SNDMORE_NOBLOCK = _SNDMORE | _NOBLOCK
_SMALL = limits.SMALL_REPLY_BYTES


def _recv_message(socket: zmq.Socket[bytes], flags: int, last: list[zmq.Frame | None]) -> list[Any]:
    """One whole message; its last frame is left in ``last[0]`` (it knows the
    connection). Cheaper than recv_multipart: a frame's ``more`` flag comes
    with it, where recv_multipart asks ZMQ_RCVMORE per frame."""
    frames = []
    while True:
        frame = socket.recv(flags, copy=False)
        frames.append(frame.bytes)
        if not frame.more:
            last[0] = frame
            return frames


def listen_endpoint(bind: str, port: int) -> str:
    """The ZeroMQ endpoint to bind for a ``--bind`` address and port."""
    if port == 0:
        return endpoint(bind, 0).rsplit(":", 1)[0] + ":*"
    return endpoint(bind, port)


@dataclass(frozen=True)
class LoopHooks:
    """What the rest of the server does at points of the loop (server/app.py wires them)."""

    #: Answers one request frame (the handler's, wrapped by persistence with a data dir).
    handle: Callable[[bytes], bytes]
    #: The largest reply the handler builds: a batch takes no more requests once
    #: its counted replies reach it.
    max_reply_bytes: int
    #: Called with the batch's request count after it was handled and before
    #: its replies go out (persistence makes writes durable here).
    before_reply: Callable[[int], None] | None = None
    #: Called with the batch's request count and the seconds it took so far,
    #: just before its replies go out (the metrics' latency histogram).
    after_batch: Callable[[int, float], None] | None = None
    #: When the socket runs dry, called with the batch's size so far; returns
    #: how many milliseconds to wait for more requests before answering the
    #: batch (0: answer now). Persistence under ``fsync always`` gives one so
    #: that concurrent writers share one fsync.
    batch_linger: Callable[[int], int] | None = None
    #: Called about every ``config.sweep_interval_s``, between batches (expiry, compaction).
    periodic: tuple[Callable[[], object], ...] = ()


class Server:
    """Answers requests from a ROUTER socket until stopped, through its :class:`LoopHooks`.

    Args:
        config: where to listen and how often to run the periodic hooks.
        hooks: the handler and what else runs at points of the loop.
        output: the large replies queued for peers, and their budgets.
        context: a ZeroMQ context; a new one when omitted.
    """

    def __init__(self, config: ServerConfig, hooks: LoopHooks, output: OutputQueue,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        self.config = config
        self.hooks = hooks
        self._context = context or zmq.Context()
        self._own_context = context is None
        self._stop = threading.Event()
        self.socket = self._context.socket(zmq.ROUTER)
        if ":" in config.bind or config.bind == "*":
            self.socket.setsockopt(zmq.IPV6, 1)  # "*" then means IPv4 and IPv6
        self.socket.setsockopt(zmq.MAXMSGSIZE, config.limits.max_message_bytes)
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        # Bounded queues per peer: a flood waits in TCP buffers, not in our memory.
        self.socket.setsockopt(zmq.RCVHWM, limits.MAX_QUEUED_MESSAGES)
        self.socket.setsockopt(zmq.SNDHWM, limits.MAX_QUEUED_MESSAGES)
        # A reply to a full or gone peer raises (and is counted) instead of vanishing.
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.copy_threshold = 0  # a reply sent with copy=False is never copied: it is counted
        #: Large replies queued for peers, and the budgets they are held to.
        self.output = output
        self._last: list[zmq.Frame | None] = [None]
        self.endpoint = ""

    def bind(self) -> str:
        """Bind the socket; returns the endpoint actually bound (with the real port)."""
        self.socket.bind(listen_endpoint(self.config.bind, self.config.port))
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def stop(self, *_: object) -> None:
        """Ask the loop to finish its batch and return; safe from a signal handler."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def serve_forever(self) -> None:
        """Answer requests until :meth:`stop`; then close the socket."""
        socket, last, output = self.socket, self._last, self.output
        # Wait in a blocking receive with a timeout rather than in a poll:
        # measured, a poll before each receive costs more per request than
        # the receive itself. zmq.Again means a quiet interval passed.
        socket.setsockopt(zmq.RCVTIMEO, int(POLL_INTERVAL_S * 1000))
        interval_s = self.config.sweep_interval_s
        next_tick = time.monotonic() + interval_s
        try:
            while not self._stop.is_set():
                try:
                    first = _recv_message(socket, 0, last)
                except zmq.Again:
                    first = None
                if first is not None:
                    self._answer_ready(first)
                if output.busy:
                    output.reap()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + interval_s
                    for task in self.hooks.periodic:
                        task()
            # What already arrived is answered, not dropped, for a moment.
            stop_by = time.monotonic() + STOP_DRAIN_S
            with contextlib.suppress(zmq.Again):
                while time.monotonic() < stop_by:
                    self._answer_ready(_recv_message(socket, _NOBLOCK, last))
        finally:
            self.close(LINGER_MS)

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket (waiting up to ``linger_ms`` for the last replies to leave); safe twice."""
        self.output.close()
        self.socket.close(linger=linger_ms)
        if self._own_context:
            self._context.term()
            self._own_context = False

    def _answer_ready(self, frames: list[Any]) -> None:
        """Answer ``frames`` and every request already waiting behind it as one batch.

        At most MAX_BATCH_REQUESTS are taken, for at most MAX_BATCH_S, and
        none once the batch's counted replies reach the reply limit.
        """
        hooks = self.hooks
        after_batch, batch_linger = hooks.after_batch, hooks.batch_linger
        started = time.perf_counter() if after_batch is not None else 0.0
        socket, handle, last, output = self.socket, hooks.handle, self._last, self.output
        events = cast(Callable[[int], int], socket.getsockopt)
        tracked_bytes = output.tracked_bytes
        replies: list[list[Any]] = []
        stop_by = 0.0
        while True:
            if len(frames) == 3 and not frames[1]:  # a REQ peer: [identity, b"", body]
                frames[2] = handle(frames[2])
            elif len(frames) == 2 and frames[1]:  # a DEALER without envelope: [identity, body]
                frames[1] = handle(frames[1])
            else:
                frames = self._answer(frames, handle)
            replies.append(frames)
            body = frames[-1]
            if len(body) > _SMALL:
                large = frames[-1] = LargeReply(body, source_fd(last[0]), len(body) > tracked_bytes)
                if large.counted:
                    output.pending_bytes += large.size
                    if output.pending_bytes >= hooks.max_reply_bytes:
                        break
            if len(replies) >= MAX_BATCH_REQUESTS:
                break
            # One ZMQ_EVENTS look after the first request: a lone request
            # (lockstep clients) then costs no failed receive; under load the
            # rest is drained until zmq.Again, one exception per batch rather
            # than one ZMQ_EVENTS call per request. (With a batch_linger the
            # zmq.Again path below decides whether to wait for more.)
            if len(replies) == 1:
                if batch_linger is None and not events(_EVENTS) & _POLLIN:
                    break
                stop_by = time.perf_counter() + MAX_BATCH_S
            elif time.perf_counter() >= stop_by:
                break
            try:
                frames = _recv_message(socket, _NOBLOCK, last)
            except zmq.Again:
                if batch_linger is None:
                    break
                wait_ms = batch_linger(len(replies))
                if not wait_ms or not socket.poll(wait_ms, zmq.POLLIN):
                    break
                # More writers came: take the request that woke us (its own
                # frames, not the last request's), so it shares this batch's fsync.
                try:
                    frames = _recv_message(socket, _NOBLOCK, last)
                except zmq.Again:
                    break
        if hooks.before_reply is not None:
            hooks.before_reply(len(replies))
        if after_batch is not None:  # before the replies: a client that has its answer sees it counted
            after_batch(len(replies), time.perf_counter() - started)
        send = socket.send
        muted = output.muted if output.has_muted else None
        for reply in replies:
            body = reply[-1]
            if muted is not None and muted(reply[0]):
                output.drop(body)
                continue
            try:
                for frame in reply[:-1]:
                    send(frame, _SNDMORE_NOBLOCK)
                if type(body) is LargeReply:
                    output.send(socket, reply[0], body)
                else:
                    send(body, _NOBLOCK)
            except zmq.ZMQError as exc:  # the peer's queue is full, or it is gone
                output.refused(reply[0], body, exc)
                # Muted from now on, in this batch too: a later reply that found room would come after a gap.
                muted = output.muted if output.has_muted else None
        last[0] = None  # the last request's frame may be large: let it go
        if output.busy:
            output.reap()

    @staticmethod
    def _answer(frames: list[bytes], handle: Callable[[bytes], bytes]) -> list[bytes]:
        # A DEALER may put its own frames before the delimiter, or omit it.
        try:
            split = frames.index(b"", 1) + 1
        except ValueError:
            split = 1
        envelope, body = frames[:split], frames[split:]
        if len(body) != 1:
            return [*envelope, encode_reply(Status.BAD_REQUEST, f"expected one body frame, got {len(body)}")]
        return [*envelope, handle(body[0])]
