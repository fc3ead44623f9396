"""Replies queued for peers: counted, and bounded per peer and in all.

ZeroMQ queues what the server sends to a peer until the kernel takes it,
and a peer that does not read leaves it there: its TCP window closes, and
ZMQ_SNDHWM (1000 messages) is the only bound, whatever their size. So, as
Redis does with its client output buffer limits, replies over
:data:`common.limits.TRACKED_REPLY_BYTES` (64 KiB; 8 KiB under a memory cap)
are counted from the moment they are built until ZeroMQ has let go of them:
they are sent without a copy and with a ``MessageTracker``, which says when
libzmq released the buffer. A peer with more than ``max_peer_bytes`` queued,
or the one with the most when all together hold more than
``max_total_bytes``, is disconnected: the server resets a duplicate of the
connection's TCP descriptor (the one the request came in on, ``ZMQ_SRCFD``),
so libzmq drops the connection and everything queued for it. The peer's
next request comes on a new connection, as after any disconnect. Smaller
replies are copied into ZeroMQ and not counted: the high-water mark bounds
them to 1000 per connection (64 MiB; 8 MiB under a memory cap). Tracking
costs more per reply than copying a small one.

The socket is a ROUTER with ``ZMQ_ROUTER_MANDATORY``: a reply to a peer whose
queue is full, or that is gone, raises instead of vanishing, and is counted.
"""

from __future__ import annotations

import errno
import logging
import os
import socket as sockets
import struct
from collections import OrderedDict, deque
from typing import Any

import zmq

from common.limits import MAX_QUEUED_MESSAGES, TRACKED_REPLY_BYTES
from server.auth import RateLimitedLog

log = logging.getLogger(__name__)

_NOBLOCK = int(zmq.NOBLOCK)

#: SO_LINGER on, 0 seconds: closing the connection resets it.
_RESET = struct.pack("ii", 1, 0)

#: Disconnected peers remembered (their identities are never reused).
_REMEMBERED_CUTS = 1024


class LargeReply:
    """A reply over SMALL_REPLY_BYTES, and the connection it goes to.

    ``counted`` when it is over the tracking threshold: then it is sent
    without a copy and counted until libzmq releases it.
    """

    __slots__ = ("body", "counted", "fd", "size")

    def __init__(self, body: bytes, fd: int, counted: bool) -> None:
        self.body = body
        self.size = len(body)  # as counted: persistence may still rewrite the body as an error
        #: The TCP descriptor the request came in on (:func:`source_fd`), or -1.
        self.fd = fd
        self.counted = counted


class _Peer:
    """One connection's queued replies: (tracker, bytes), oldest first."""

    __slots__ = ("bytes", "fd", "queue")

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.queue: deque[tuple[zmq.MessageTracker, int]] = deque()
        self.bytes = 0


class OutputQueue:
    """Counts the reply bytes the server holds for peers and enforces the budgets.

    Args:
        max_peer_bytes: most bytes queued for one peer before it is disconnected.
        max_total_bytes: most bytes queued for all peers; past it the peer with
            the most is disconnected.
    """

    def __init__(self, max_peer_bytes: int, max_total_bytes: int) -> None:
        self.max_peer_bytes = max_peer_bytes
        self.max_total_bytes = max_total_bytes
        #: Replies over this size are counted (see LargeReply).
        self.tracked_bytes = TRACKED_REPLY_BYTES
        #: Counted replies built for the batch being answered, not yet sent.
        self.pending_bytes = 0
        #: Counted replies sent, not yet released by libzmq.
        self.queued_bytes = 0
        self.disconnected_peers = 0
        self.dropped_replies = 0
        self.unreachable_replies = 0
        self._peers: dict[bytes, _Peer] = {}
        #: True while some peer has counted replies queued (then :meth:`reap` has work).
        self.busy = False
        # Peers disconnected or muted lately: they get no more replies (a
        # ROUTER never reuses an identity), and libzmq refusing replies to a
        # disconnected one for a while is not a second disconnection.
        self._cut: OrderedDict[bytes, None] = OrderedDict()
        self._log = RateLimitedLog(log, what="disconnections")

    @property
    def held_bytes(self) -> int:
        """Counted reply bytes the process holds now: built or queued."""
        return self.pending_bytes + self.queued_bytes

    def send(self, socket: zmq.Socket[bytes], identity: bytes, reply: LargeReply) -> None:
        """Send the last frame of a reply whose envelope went out already; count it if it is to be."""
        if not reply.counted:
            socket.send(reply.body, _NOBLOCK)
            return
        size = reply.size
        self.pending_bytes -= size
        peer = self._peers.get(identity)
        if peer is None:
            peer = self._peers[identity] = _Peer(_dup(reply.fd))
            self.busy = True
        tracker = socket.send(reply.body, _NOBLOCK, copy=False, track=True)
        peer.queue.append((tracker, size))
        peer.bytes += size
        self.queued_bytes += size

    def refused(self, identity: bytes, reply: Any, exc: zmq.ZMQError) -> None:
        """ZeroMQ would not take a reply: the peer's queue is full, or the peer is gone.

        A peer whose queue of 1000 replies is full does not read: it is
        disconnected if the reply is large enough to know its connection.
        Either way it gets no reply on that connection from now on
        (:meth:`muted`): one missing in the middle of its replies would make
        a pipelining client take the next reply for the missing one's. It
        times out and resends on a new connection.
        """
        large = isinstance(reply, LargeReply)
        if large and reply.counted:
            self.pending_bytes -= reply.size
        if exc.errno == errno.EHOSTUNREACH:
            self.unreachable_replies += 1
            return
        if exc.errno != errno.EAGAIN:
            raise exc
        self.dropped_replies += 1
        if identity in self._cut:
            return
        peer = self._peers.get(identity)
        if peer is None and large:
            peer = self._peers[identity] = _Peer(_dup(reply.fd))  # forgotten at the next reap
            self.busy = True
        if peer is not None:
            self._disconnect(identity, peer, f"its queue of {MAX_QUEUED_MESSAGES} replies is full "
                                             f"({peer.bytes} bytes counted)")
        else:
            self._mute(identity)

    def drop(self, reply: Any) -> None:
        """A reply to a muted peer is not sent; one that was counted no longer is."""
        self.dropped_replies += 1
        if isinstance(reply, LargeReply) and reply.counted:
            self.pending_bytes -= reply.size

    @property
    def has_muted(self) -> bool:
        return bool(self._cut)

    def muted(self, identity: bytes) -> bool:
        """True for a peer that gets no more replies: disconnected, or one of its replies was dropped."""
        return identity in self._cut

    def reap(self) -> None:
        """Forget replies libzmq has released; disconnect peers over the budgets."""
        total = 0
        for identity, peer in list(self._peers.items()):
            queue = peer.queue
            while queue and queue[0][0].done:
                self.queued_bytes -= queue[0][1]
                peer.bytes -= queue.popleft()[1]
            if not queue:
                self._close(peer)
                del self._peers[identity]
                self.busy = bool(self._peers)
            elif identity not in self._cut:
                if peer.bytes > self.max_peer_bytes:
                    self._disconnect(identity, peer, f"{peer.bytes} bytes queued, over the per-peer output "
                                                     f"budget of {self.max_peer_bytes}")
                else:
                    total += peer.bytes
        while total > self.max_total_bytes:
            identity, largest = max(((i, p) for i, p in self._peers.items() if i not in self._cut),
                                    key=lambda item: item[1].bytes)
            total -= largest.bytes
            self._disconnect(identity, largest, f"{largest.bytes} bytes queued, the most while all peers' "
                                                f"{total + largest.bytes} are over the output budget of "
                                                f"{self.max_total_bytes}")

    def _mute(self, identity: bytes) -> None:
        self._cut[identity] = None
        if len(self._cut) > _REMEMBERED_CUTS:
            self._cut.popitem(last=False)

    def _disconnect(self, identity: bytes, peer: _Peer, why: str) -> None:
        """Drop what is queued for ``peer`` and its connection (libzmq does both on a shutdown)."""
        self._mute(identity)
        self.disconnected_peers += 1
        if peer.fd is None:
            self._log.warning("cannot disconnect a peer that does not read its replies (%s): "
                              "its connection is not known", why)
            return
        self._log.warning("disconnected a peer that does not read its replies: %s", why)
        connection = sockets.socket(fileno=peer.fd)  # owns the duplicate from here on
        peer.fd = None
        try:
            # Reset rather than close: the kernel drops what it still holds
            # for the peer, and the peer learns at once, even if it never reads.
            connection.setsockopt(sockets.SOL_SOCKET, sockets.SO_LINGER, _RESET)
            connection.shutdown(sockets.SHUT_RDWR)
        except OSError:
            pass  # already gone: libzmq drops its queue all the same
        finally:
            connection.close()

    @staticmethod
    def _close(peer: _Peer) -> None:
        if peer.fd is not None:
            os.close(peer.fd)
            peer.fd = None

    def close(self) -> None:
        """Let go of the duplicated descriptors (the server is stopping)."""
        for peer in self._peers.values():
            self._close(peer)
        self._peers.clear()
        self.busy = False

    def stats(self) -> dict[str, Any]:
        """The ``output`` section of ``stats``."""
        return {
            "queued_bytes": self.queued_bytes,
            "queued_peers": len(self._peers),
            "max_peer_output_bytes": self.max_peer_bytes,
            "max_output_bytes": self.max_total_bytes,
            "disconnected_peers": self.disconnected_peers,
            "dropped_replies": self.dropped_replies,
            "unreachable_replies": self.unreachable_replies,
        }


def source_fd(frame: zmq.Frame | None) -> int:
    """The TCP descriptor ``frame`` came in on, or -1 (the request's frame is not kept: it may be large)."""
    if frame is None:
        return -1
    try:
        return int(frame.get(zmq.SRCFD))
    except zmq.ZMQError:
        return -1


def _dup(fd: int) -> int | None:
    """A duplicate of ``fd``, or None.

    Taken in the batch that answers the peer's request, and held, so that the
    number cannot be reused for another connection before it is used.
    """
    try:
        return os.dup(fd) if fd >= 0 else None
    except OSError:
        return None
