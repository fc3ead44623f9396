"""The client's side of CurveZMQ: the keys each secured socket needs.

A refused key, or a wrong server key, is told apart from a dead node by
:mod:`client.diagnose`, which watches every client socket's handshake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

if TYPE_CHECKING:
    from common.keys import KeySource


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

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Set the keys on ``socket`` (before connect)."""
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.client_public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.client_secret)
