"""Wires access control into a :class:`server.loop.Server` before it binds.

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
from server.config import ServerConfig
from server.loop import Server
from server.zap import MONITOR_EVENTS, ZapThread

log = logging.getLogger(__name__)

#: The ZAP domain the server's socket announces.
ZAP_DOMAIN = b"memlookup"


def secure(server: Server, config: ServerConfig, context: zmq.Context) -> ZapThread:
    """Configure ``server``'s socket and start its ZAP thread; call before ``bind``.

    Raises:
        ValueError: a key file or the authorized keys directory cannot be read.
    """
    curve = config.curve_secret_key is not None
    policy = AccessPolicy.build(config.allow, config.insecure_allow_all, curve, config.authorized_keys)
    socket = server.socket
    if curve:
        public, secret = load_key_pair(config.curve_secret_key)  # type: ignore[arg-type]
        if os.stat(config.curve_secret_key).st_mode & 0o077:  # type: ignore[arg-type]
            log.warning("%s can be read by other users: chmod 600 it", config.curve_secret_key)
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
    socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    monitor = socket.get_monitor_socket(MONITOR_EVENTS) if curve else None
    zap = ZapThread(context, policy, monitor)
    zap.start()
    server.handler.stats_sections["auth"] = lambda: {"curve": curve, **policy.stats()}
    return zap
