"""Why a node does not answer, read from the ZeroMQ monitor of the client's socket.

ZeroMQ hides connection trouble: a REQ socket whose peer refuses the TCP
connection, or ends the handshake, just keeps reconnecting, and the request
waits out its timeout. A monitor on the socket sees what happened:

* ``CLOSED`` while connecting (libzmq closes the socket of a failed connect,
  then says ``CONNECT_RETRIED``): the TCP connection was refused -- nothing
  listens at that address and port. (libzmq gives no errno; an ICMP
  "unreachable" looks the same. A ``CONNECT_RETRIED`` after ``DISCONNECTED``
  is no refusal: the server dropped a connection it had accepted.)
* ``HANDSHAKE_FAILED_AUTH``: the server's access policy refused us. libzmq
  reports it for the NULL mechanism as for CURVE: the server ends the
  handshake with an ERROR command (ZAP status 400). Without keys that is
  protected mode (the server admits only loopback peers unless started with
  ``--allow``); with CURVE, our client key is not among its
  ``--authorized-keys`` or our address is not in its ``--allow``.
* ``HANDSHAKE_FAILED_PROTOCOL`` or ``_NO_DETAIL``: the two sides' security
  does not match (one uses CURVE and the other not, or the server key is
  wrong), or the server dropped the connection at once.
* ``CONNECTED`` and ``HANDSHAKE_SUCCEEDED`` but no reply: the server is up,
  and slow or stuck; only ``CONNECT_DELAYED``: no answer to the TCP
  connection at all (host down, or packets dropped).

:class:`ConnectionWatch` waits for the reply and the monitor together, so a
refusal is reported in milliseconds instead of after the timeout and every
retry; once a reply has come the monitor is closed, and a settled
connection costs nothing more. :func:`unavailable` words the error for a
request that got no reply, from what the monitor saw.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import zmq

from common.errors import AuthenticationError, NodeUnavailableError, NotListeningError

_EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_DELAYED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CLOSED
           | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_MISMATCH = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

# What the socket's connection last did.
_CONNECTING = "connecting"  # a TCP connect under way, never answered
_REFUSED = "refused"  # the last TCP connect was refused
_TCP = "tcp"  # TCP connected, no handshake yet
_READY = "ready"  # the handshake succeeded

#: Why a request got no reply, by the state its connection was left in.
_SILENCE = {
    _CONNECTING: "no TCP connection could be made (the host is down or unreachable, or a firewall drops "
                 "the packets)",
    _TCP: "the TCP connection was made, but the ZeroMQ handshake never finished (a stopped or overloaded "
          "server, or not a ZeroMQ one?)",
    _READY: "connected, but the server did not answer (busy, or stuck?)",
}


def _host_port(endpoint: str) -> str:
    return endpoint.removeprefix("tcp://")


class ConnectionWatch:
    """The monitor of one client socket, until that socket's first reply.

    Make it before the socket connects (events before are lost).

    Args:
        socket: the client socket, not yet connected.
        timeout_s: how long :meth:`receive` waits for a reply.
        label: the node as the user named it, for messages.
        endpoint: ``tcp://host:port``.
        secured: the socket uses CURVE (changes what a refusal means).
    """

    def __init__(self, socket: zmq.Socket[Any], timeout_s: float, label: str, endpoint: str,
                 secured: bool) -> None:
        monitor: zmq.Socket[Any] = socket.get_monitor_socket(_EVENTS)
        monitor.setsockopt(zmq.LINGER, 0)
        self._monitor: zmq.Socket[Any] | None = monitor
        # An asyncio socket's monitor is an asyncio socket too: read it through
        # a blocking view of the same libzmq socket (never closed itself).
        self._events: zmq.Socket[bytes] = (monitor if type(monitor) is zmq.Socket
                                           else zmq.Socket.shadow(monitor.underlying))
        self._timeout_s = timeout_s
        self._label, self._endpoint, self._secured = label, endpoint, secured
        self.state = _CONNECTING
        #: Connections the server closed after the handshake (an oversized request does that).
        self.dropped = 0

    def receive(self, socket: zmq.Socket[bytes], fail_if_refused: bool) -> bytes:
        """The next reply on ``socket``, waiting up to ``timeout_s``.

        Raises:
            zmq.Again: no reply in time.
            AuthenticationError: the server ended the handshake (at once).
            NotListeningError: the TCP connection was refused, when
                ``fail_if_refused`` (at once; otherwise ZeroMQ keeps trying
                to connect until the timeout).
        """
        monitor = self._monitor
        if monitor is None:
            return socket.recv()
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + self._timeout_s
        while True:
            ready = dict(poller.poll(max(0, int((deadline - time.monotonic()) * 1000))))
            if socket in ready:
                reply = socket.recv(zmq.NOBLOCK)
                self.close(socket)
                return reply
            if monitor in ready:
                self._read_events(fail_if_refused)
            elif time.monotonic() >= deadline:
                raise zmq.Again()

    def settle(self, fail_if_refused: bool) -> None:
        """Take in what the monitor saw so far, without waiting (after a wait timed out).

        Raises:
            AuthenticationError, NotListeningError: as :meth:`receive`.
        """
        if self._monitor is not None:
            self._read_events(fail_if_refused)

    def _read_events(self, fail_if_refused: bool) -> None:
        assert self._monitor is not None
        while True:
            try:
                frames = self._events.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2 or len(frames[0]) != 6:
                continue
            event = int.from_bytes(frames[0][:2], sys.byteorder)  # then 4 bytes of value; libzmq's own order
            if event == zmq.EVENT_CONNECTED:
                self.state = _TCP
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.state = _READY
            elif event == zmq.EVENT_DISCONNECTED:
                if self.state == _READY:
                    self.dropped += 1
                self.state = _CONNECTING
            elif event == zmq.EVENT_CLOSED and self.state in (_CONNECTING, _REFUSED):
                self.state = _REFUSED
                if fail_if_refused:
                    raise self.not_listening()
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise AuthenticationError(self._policy_refusal(), node=self._label)
            elif event in _MISMATCH:
                raise AuthenticationError(self._mismatch(), node=self._label)

    def _policy_refusal(self) -> str:
        if self._secured:
            return (f"{self._label}: the server refused our client key (it is not among its --authorized-keys; "
                    "--client-key names ours), or our address (not in its --allow)")
        return (f"{self._label}: refused by the server's access policy: without keys it admits only loopback "
                "peers unless started with --allow NETWORK (or give it keys: --curve-secret-key, and "
                "--server-key here)")

    def _mismatch(self) -> str:
        if self._secured:
            return (f"{self._label}: the CURVE handshake failed: wrong --server-key, or the server is not "
                    "using CURVE")
        return (f"{self._label}: the handshake failed, the server dropped the connection: does it use "
                "CurveZMQ? Then give --server-key (its .key file)")

    def not_listening(self) -> NotListeningError:
        """The error for a refused TCP connection."""
        where = _host_port(self._endpoint)
        by = "" if self._label == where else f" by {self._label}"
        return NotListeningError(f"connection refused{by}: is memlookup-server running on {where}?",
                                 node=self._label)

    def close(self, socket: zmq.Socket[bytes]) -> None:
        """Stop watching ``socket`` (before it is closed). What was seen is kept."""
        if self._monitor is not None:
            socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None


def unavailable(label: str, waited_s: float, attempts: int, timeout_s: float,
                watch: ConnectionWatch | None, detail: str = "") -> NodeUnavailableError:
    """The error for a request that got no reply after ``attempts``, saying what
    the last attempt's connection did; :class:`NotListeningError` if it was refused.
    ``detail`` follows the count of attempts (what a stream left unanswered)."""
    message = (f"no reply from {label} within {waited_s:.1f} s "
               f"({attempts} attempt{'s' if attempts != 1 else ''} of {timeout_s:g} s){detail}")
    if watch is not None and watch.state == _REFUSED:
        refused = watch.not_listening()
        return NotListeningError(f"{refused} ({message})", node=label, waited_s=waited_s)
    if watch is not None:
        why = ("the server closed the connection after our request (was it over its --max-message-bytes?)"
               if watch.dropped and watch.state == _READY else _SILENCE[watch.state])
        message += f": {why}"
    return NodeUnavailableError(message, node=label, waited_s=waited_s)
