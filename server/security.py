"""Wires access control into the server's socket before it binds.

Sets CurveZMQ options on the ROUTER socket when the server has a key pair,
names a ZAP domain so that ZeroMQ consults the handler even for plaintext
(NULL) connections, and starts the :class:`server.zap.ZapThread` that applies
the :class:`server.auth.AccessPolicy` built from the flags.
"""

from __future__ import annotations

import logging
import os

import zmq

from common.keys import load_key_pair
from server.auth import AccessPolicy
from server.zap import MONITOR_EVENTS, ZapThread

log = logging.getLogger(__name__)

#: The ZAP domain the server's socket announces.
ZAP_DOMAIN = b"memlookup"


def secure(socket: zmq.Socket[bytes], policy: AccessPolicy, curve_secret_key: str | None,
           context: zmq.Context[zmq.Socket[bytes]]) -> ZapThread:
    """Configure ``socket`` for ``policy`` (CURVE with ``curve_secret_key``) and start its ZAP
    thread; call before the socket binds.

    Raises:
        ValueError: the key file cannot be read.
    """
    if curve_secret_key is not None:
        public, secret = load_key_pair(curve_secret_key)
        if os.stat(curve_secret_key).st_mode & 0o077:
            log.warning("%s can be read by other users: chmod 600 it", curve_secret_key)
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
    socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    monitor = socket.get_monitor_socket(MONITOR_EVENTS) if curve_secret_key is not None else None
    zap = ZapThread(context, policy, monitor)
    zap.start()
    return zap
