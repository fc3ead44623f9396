"""The server assembled in one place: every part built from the config and wired through explicit hooks.

:func:`build_server` makes the parts in this order, each given what it works
with in its constructor (nothing overwrites another's attributes):

1. the store and the write replies remembered by request id;
2. with ``--data-dir``, persistence, which loads both (server/persistence.py),
   once a node of a cluster back after longer than the tombstone grace has
   set its records aside (server/rejoin.py);
3. the output budgets (server/output.py), and with ``--max-memory`` the
   memory guard, which counts them (server/memory.py);
4. the access policy (server/auth.py);
5. the handler, with the guard's hooks and every extra ``stats`` section;
6. the loop's hooks: the handler (wrapped by persistence), persistence's
   batch hooks, the metrics' latency histogram, the periodic sweeps;
7. the loop of the core that runs (server/core.py: compiled, or pure
   Python) and its socket, then CURVE and ZAP on it (server/security.py),
   the bind, and the metrics endpoint;
8. with ``--join``, the membership thread (server/membership_thread.py),
   once the view knows the address the port was bound at.

Whatever must be released (the data directory's lock and journal, the
ZeroMQ context and sockets, the ZAP thread, the metrics endpoint, the
membership thread) goes on one
``ExitStack`` as it is made: a failure at any step, or the end of serving,
releases exactly what was made, newest first.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

import zmq

from common import __version__
from common.keys import load_key_pair
from server.auth import AccessPolicy
from server.clock import HybridLogicalClock
from server.config import ServerConfig
from server.core import CORE_DESCRIPTION, JOURNALED_TABLE, TABLE, make_server
from server.datadir import DataDir, RecoveryError
from server.eviction import EVICTION_POLICIES
from server.handler import Handler
from server.journal import FSYNC_POLICIES
from server.loop import LoopHooks, Server
from server.membership import MemberView
from server.memory import cap_memory
from server.output import OutputQueue
from server.persistence import Persistence, in_memory_stats
from server.replies import RememberedReplies
from server.security import secure
from server.store import Store

#: The start-up lines are the server's own (``server: ... listening on``), as operators and tests read them.
log = logging.getLogger("server")


class StartupError(Exception):
    """The server cannot start; the message says why (``python -m server`` logs it and exits 1)."""


class App:
    """A built server: serve it once, then close it (or use it as a context manager)."""

    def __init__(self, server: Server, handler: Handler, persistence: Persistence | None, policy: AccessPolicy,
                 where: str, stack: contextlib.ExitStack) -> None:
        self.server = server
        self.handler = handler
        self.persistence = persistence
        self._policy = policy
        self._where = where
        self._stack = stack

    def serve_forever(self) -> None:
        """Answer requests until SIGTERM or SIGINT (or :meth:`Server.stop`)."""
        self.server.install_signal_handlers()
        log.info("%s", self._policy.describe())
        log.info("memlookup %s listening on %s (%s), %s", __version__, self.server.endpoint, self._where,
                 CORE_DESCRIPTION)
        self.server.serve_forever()

    def close(self) -> None:
        """Release every part, newest first (the journal is fsynced, the data dir unlocked)."""
        self._stack.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def build_server(config: ServerConfig) -> App:
    """Every part of a server for ``config``, bound and ready to serve.

    Raises:
        StartupError: the data directory cannot be loaded, a key file or the
            authorized keys cannot be read, the memory limit is below what the
            empty server needs, or the address or the metrics port cannot be
            bound. Whatever was made is released first.
    """
    stack = contextlib.ExitStack()
    try:
        return _build(config, stack)
    except BaseException:
        stack.close()
        raise


def _build(config: ServerConfig, stack: contextlib.ExitStack) -> App:
    limits = config.limits
    if config.join and config.client_key is not None:
        try:
            load_key_pair(config.client_key)  # refused now, not as peers that never answer
        except ValueError as exc:
            raise StartupError(f"--client-key: {exc}") from None
    replies = RememberedReplies()
    persistence: Persistence | None = None
    store: Store
    hlc = HybridLogicalClock(config.node_name)
    if config.data_dir is None:
        store = TABLE(hlc=hlc, tombstone_grace_s=config.tombstone_grace_s)
        where = "in memory"
    else:
        store = journaled = JOURNALED_TABLE(hlc=hlc, tombstone_grace_s=config.tombstone_grace_s)
        persistence = Persistence(config.data_dir, FSYNC_POLICIES[config.fsync], journaled, replies,
                                  config.compact_after_bytes, config.repair)
        before_load: Callable[[DataDir], object] | None = None
        if config.join:
            from server.rejoin import set_aside_if_away_too_long

            before_load = functools.partial(set_aside_if_away_too_long, node_name=config.node_name,
                                            grace_s=config.tombstone_grace_s, seeds=config.join,
                                            server_key=config.curve_secret_key, client_key=config.client_key)
        try:
            report = persistence.open(before_load)
        except RecoveryError as exc:
            raise StartupError(str(exc)) from None
        stack.callback(persistence.close)
        for line in report.repaired:
            log.warning("repaired: %s", line)
        log.info("loaded %d keys from %d journal records in %.2f s", report.keys, report.records, report.load_s)
        where = f"data dir {config.data_dir}, fsync {config.fsync}"

    output = OutputQueue(limits.max_peer_output_bytes, limits.max_output_bytes)
    try:
        guard = cap_memory(store, config.max_memory_bytes, EVICTION_POLICIES[config.eviction], output)
        policy = AccessPolicy.build(config.allow, config.insecure_allow_all, config.curve_secret_key is not None,
                                    config.authorized_keys)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "output": output.stats,
        "persistence": persistence.stats if persistence is not None else in_memory_stats,
    }
    if guard is not None:
        sections["memory"] = guard.stats
    sections["auth"] = policy.stats
    members = MemberView(config.node_name, config.replicas, bool(config.join), config.data_dir,
                         config.tombstone_grace_s, loaded_until_ms=hlc.last[0])
    handler = Handler(store, limits, replies, guard, sections, members=members)

    latency = None
    if config.metrics_port:
        from server.metrics import BatchLatency  # prometheus_client is imported only when metrics are on

        latency = BatchLatency()
    hooks = LoopHooks(
        handle=persistence.durable(handler.handle) if persistence is not None else handler.handle,
        max_reply_bytes=handler.max_reply_bytes,
        before_reply=persistence.before_reply if persistence is not None else None,
        after_batch=latency.observe if latency is not None else None,
        batch_linger=persistence.batch_linger if persistence is not None and persistence.fsync.syncs_each_batch
        else None,
        periodic=(store.sweep, persistence.periodic) if persistence is not None else (store.sweep,),
    )

    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    stack.callback(context.term)
    plain = handler if persistence is None and guard is None else None
    server = make_server(config, hooks, output, context, plain)
    stack.callback(server.close)
    try:
        zap = secure(server.socket, policy, config.curve_secret_key, context)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    stack.callback(zap.stop)
    try:
        server.bind()
    except (zmq.ZMQError, ValueError) as exc:  # address in use, bad interface
        raise StartupError(f"cannot listen on {config.bind} port {config.port}: {exc}") from None

    if latency is not None:
        from server.metrics import serve_metrics

        try:
            metrics = serve_metrics(handler, latency, config.bind, config.metrics_port)
        except OSError as exc:
            raise StartupError(f"cannot serve metrics on {config.bind} port {config.metrics_port}: {exc}") from None
        stack.callback(metrics.server_close)
        stack.callback(metrics.shutdown)
        log.info("metrics on http://%s:%d/metrics", config.bind, metrics.server_port)
    members.listening_at(config.advertised(int(server.endpoint.rsplit(":", 1)[1])))
    if config.join:
        from server.membership_thread import MembershipThread  # it needs the client library: only with --join

        gossip = MembershipThread(members, config.join, _loopback(server.endpoint), config.curve_secret_key,
                                  config.client_key)
        gossip.start()
        stack.callback(gossip.stop)
    return App(server, handler, persistence, policy, where, stack)


def _loopback(bound: str) -> str:
    """``host:port`` this process reaches its own socket at (``tcp://0.0.0.0:7400`` -> ``127.0.0.1:7400``)."""
    host, port = bound[len("tcp://"):].rsplit(":", 1)
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "*": "127.0.0.1"}.get(host, host)
    return f"{host}:{port}"
