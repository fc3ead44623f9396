"""``python -m server`` / ``memlookup-server``: run one memlookup node."""

from __future__ import annotations

import logging
import sys

import zmq

from common import __version__
from server.config import parse_config
from server.handler import Handler
from server.journaled_store import JournaledStore
from server.loop import Server
from server.persistence import Persistence, RecoveryError, in_memory_stats
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
    persistence = None
    if config.data_dir is None:
        handler = Handler(Store(), config.limits)
        handler.stats_sections["persistence"] = in_memory_stats
        where = "in memory"
    else:
        store = JournaledStore()
        persistence = Persistence(config.data_dir, config.fsync, store, config.compact_after_bytes, config.repair)
        try:
            report = persistence.open()
        except RecoveryError as exc:
            log.error("%s", exc)
            return 1
        for line in report.repaired:
            log.warning("repaired: %s", line)
        log.info("loaded %d keys from %d journal records in %.2f s", report.keys, report.records, report.load_s)
        handler = Handler(store, config.limits)
        where = f"data dir {config.data_dir}, fsync {config.fsync}"
    context = zmq.Context()
    server = Server(config, handler, context)
    if persistence is not None:
        persistence.attach(server)

    def release() -> None:
        server.socket.close(linger=0)
        context.term()
        if persistence is not None:
            persistence.close()

    try:
        cap_memory(server.handler, config.max_memory_bytes, config.eviction, server.output)
        zap = secure(server, config, context)
    except ValueError as exc:
        log.error("%s", exc)
        release()
        return 1
    try:
        bound = server.bind()
    except Exception as exc:  # zmq.ZMQError: address in use, bad interface
        log.error("cannot listen on %s port %s: %s", config.bind, config.port, exc)
        zap.stop()
        release()
        return 1
    if config.metrics_port:
        from server.metrics import serve_metrics

        try:
            latency, metrics_port = serve_metrics(server.handler, config.bind, config.metrics_port)
        except OSError as exc:
            log.error("cannot serve metrics on %s port %s: %s", config.bind, config.metrics_port, exc)
            zap.stop()
            release()
            return 1
        server.after_batch = latency.observe
        log.info("metrics on http://%s:%d/metrics", config.bind, metrics_port)
    server.install_signal_handlers()
    log.info("%s", zap.policy.describe())
    log.info("memlookup %s listening on %s (%s)", __version__, bound, where)
    try:
        server.serve_forever()
    finally:
        zap.stop()
        context.term()
        if persistence is not None:
            persistence.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
