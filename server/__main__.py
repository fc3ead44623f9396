"""``python -m server`` / ``memlookup-server``: run one memlookup node."""

from __future__ import annotations

import logging
import sys

from common import __version__
from server.config import parse_config
from server.handler import Handler
from server.loop import Server
from server.store import Store

log = logging.getLogger("server")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    server = Server(config, Handler(Store(), config.limits))
    try:
        bound = server.bind()
    except Exception as exc:  # zmq.ZMQError: address in use, bad interface
        log.error("cannot listen on %s port %s: %s", config.bind, config.port, exc)
        return 1
    if config.metrics_port:
        from server.metrics import serve_metrics

        try:
            latency, metrics_port = serve_metrics(server.handler, config.bind, config.metrics_port)
        except OSError as exc:
            log.error("cannot serve metrics on %s port %s: %s", config.bind, config.metrics_port, exc)
            return 1
        server.after_batch = latency.observe
        log.info("metrics on http://%s:%d/metrics", config.bind, metrics_port)
    server.install_signal_handlers()
    log.info("memlookup %s listening on %s (in memory)", __version__, bound)
    server.serve_forever()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
