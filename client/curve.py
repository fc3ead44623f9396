"""The client's side of CurveZMQ: keys on each socket, and telling a refusal from silence.

A server that refuses our key (or that we hold the wrong key for) never
answers; to the Lazy Pirate loop that looks like a dead node. So a secured
transport also opens a ZeroMQ monitor on each socket and, when an attempt
times out, reads it: a failed handshake becomes an
:class:`common.errors.AuthenticationError` at once instead of more retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

if TYPE_CHECKING:
    from common.keys import KeySource

_HANDSHAKE_FAILURES: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the server refused our client key",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the CURVE handshake failed (wrong server key, or the server is not using CURVE)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the CURVE handshake failed (wrong server key?)",
}
_EVENTS = sum(_HANDSHAKE_FAILURES) | zmq.EVENT_HANDSHAKE_SUCCEEDED


@dataclass(frozen=True)
class CurveKeys:
    """The three Z85 keys a client socket needs."""

    server_public: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def load(cls, server_key: KeySource, client_key: KeySource | None = None) -> CurveKeys:
        """Keys from ``server_key`` (a ``.key`` file or Z85 text) and ``client_key``
        (a ``.key_secret`` file); without one, an ephemeral pair is made (the
        link is encrypted, but a server with authorized keys will refuse it).

        Raises:
            ValueError: a file is missing or holds no key.
        """
        from common.keys import load_key_pair, load_public_key  # zmq.auth: only for secured clients

        server_public = load_public_key(server_key)
        if client_key is None:
            try:
                client_public, client_secret = zmq.curve_keypair()
            except zmq.ZMQError as exc:  # a libzmq built without CURVE
                from common.errors import TransportError

                raise TransportError(f"cannot make a CURVE key pair: {exc}", exc.errno) from exc
        else:
            client_public, client_secret = load_key_pair(client_key)
        return cls(server_public, client_public, client_secret)

    @classmethod
    def from_options(cls, server_key: KeySource | None, client_key: KeySource | None) -> CurveKeys | None:
        """None when neither key is given; see :meth:`load`."""
        if server_key is None and client_key is None:
            return None
        if server_key is None:
            raise ValueError("a client key needs the server's public key too (server_key / --server-key)")
        return cls.load(server_key, client_key)

    def apply(self, socket: zmq.Socket[Any]) -> zmq.Socket[Any]:
        """Set the keys on ``socket`` (before connect); returns its monitor socket
        (an asyncio one for an asyncio socket)."""
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.client_public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.client_secret)
        monitor = socket.get_monitor_socket(_EVENTS)
        monitor.setsockopt(zmq.LINGER, 0)
        return monitor


def handshake_failure(monitor: zmq.Socket[Any]) -> str | None:
    """Why the handshake failed, if the monitor saw it fail and never succeed.

    Reads what the monitor has queued without waiting; an asyncio monitor is
    read through a blocking view of the same socket.
    """
    from zmq.utils.monitor import parse_monitor_message  # imports asyncio: keep it off the CLI's start

    if type(monitor) is not zmq.Socket:
        monitor = zmq.Socket.shadow(monitor.underlying)
    failure = None
    while monitor.poll(0):
        try:
            event = int(parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))["event"])
        except (zmq.ZMQError, ValueError, KeyError):
            break
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            failure = None
        elif event in _HANDSHAKE_FAILURES:
            failure = _HANDSHAKE_FAILURES[event]
    return failure

