"""``python -m server`` / ``memlookup-server``: run one memlookup node."""

from __future__ import annotations

import logging
import sys

import zmq

from common import __version__
from server.config import parse_config
from server.handler import Handler
from server.loop import Server
from server.memory import cap_memory
from server.security import secure
from server.store import Store

log = logging.getLogger("server")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    context = zmq.Context()
    server = Server(config, Handler(Store(), config.limits), context)
    try:
        cap_memory(server.handler, config.max_memory_bytes, config.eviction)
        zap = secure(server, config, context)
    except ValueError as exc:
        log.error("%s", exc)
        server.socket.close(linger=0)
        context.term()
        return 1
    try:
        bound = server.bind()
    except Exception as exc:  # zmq.ZMQError: address in use, bad interface
        log.error("cannot listen on %s port %s: %s", config.bind, config.port, exc)
        zap.stop()
        server.socket.close(linger=0)
        context.term()
        return 1
    server.install_signal_handlers()
    log.info("%s", zap.policy.describe())
    log.info("memlookup %s listening on %s (in memory)", __version__, bound)
    server.serve_forever()
    zap.stop()
    context.term()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
