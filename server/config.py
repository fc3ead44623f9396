"""Server settings: command-line flags, each with an environment variable.

A flag beats its environment variable, which beats the default. ``--help``
shows all three for every setting.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
from dataclasses import dataclass, field

from common import __version__, limits
from common.address import DEFAULT_PORT, split_node
from common.limits import Limits
from server.auth import parse_networks
from server.eviction import EVICTION_POLICIES
from server.journal import FSYNC_POLICIES
from server.memory import parse_bytes
from server.snapshot import COMPACT_AFTER_BYTES
from server.store import TOMBSTONE_GRACE_S

LOG_LEVELS = ("debug", "info", "warning", "error")

#: ``--data-dir``'s environment variables, the one that wins first:
#: MEMLOOKUP_DATA_DIR, named like every other setting's, then the older
#: SERVER_DATA_DIR (which existing deployments and the image set).
DATA_DIR_ENV = ("MEMLOOKUP_DATA_DIR", "SERVER_DATA_DIR")

#: (status, meaning), for the man page.
EXIT_STATUS: tuple[tuple[int, str], ...] = (
    (0, "stopped by SIGTERM or SIGINT, after answering the request in flight"),
    (1, "could not start: cannot listen on the address, a key file or the data directory cannot be used "
        "(corrupt, or another server holds it)"),
    (2, "bad usage: an unknown flag or a value out of range"),
)

#: (command line, what it does), for the man page.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("memlookup-server", "in memory, on 127.0.0.1:7400, loopback peers only"),
    ("memlookup-server --data-dir /var/lib/memlookup", "keep the table across restarts and crashes"),
    ("memlookup-server --bind '*' --allow 10.0.0.0/8", "listen everywhere, admit one network"),
    ("memlookup-server --max-memory 1gb --eviction allkeys-lru", "at most 1 GiB, evicting the least recently used"),
    ("memlookup-server --curve-secret-key server.key_secret", "encrypt every connection (memlookup-keygen . server)"),
)


@dataclass
class ServerConfig:
    """Everything ``python -m server`` can be told."""

    bind: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    log_level: str = "info"
    limits: Limits = field(default_factory=Limits)
    sweep_interval_s: float = 0.1
    # Security (server/auth.py, server/security.py, server/memory.py)
    curve_secret_key: str | None = None
    authorized_keys: str | None = None
    client_key: str | None = None  # with --join: this node's key pair as a client of the others
    allow: list[str] = field(default_factory=list)
    insecure_allow_all: bool = False
    max_memory_bytes: int = 0
    eviction: str = "noeviction"
    metrics_port: int = 0
    data_dir: str | None = None
    fsync: str = "everysec"
    repair: bool = False
    compact_after_bytes: int = COMPACT_AFTER_BYTES
    # Versions and tombstones (server/clock.py, server/store.py)
    node_name: str = field(default_factory=socket.gethostname)
    tombstone_grace_s: float = TOMBSTONE_GRACE_S
    # Membership (server/membership.py, docs/CLUSTER.md)
    advertise: str = ""  # HOST[:PORT] others reach this node at; empty: NODE_NAME and the bound port
    join: list[str] = field(default_factory=list)  # seed addresses; empty: a cluster of one
    replicas: int = 2

    def advertised(self, bound_port: int) -> str:
        """``host:port`` where clients and other nodes reach this node (its entry's address)."""
        host, port = split_node(self.advertise or self.node_name, bound_port)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _env(name: str, default: object) -> object:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    """The ``memlookup-server`` argument parser (also the source of its man page)."""
    parser = argparse.ArgumentParser(
        prog="memlookup-server",
        description="Serve an in-memory key-value lookup table over ZeroMQ request-reply.",
        epilog="Stop with SIGTERM or SIGINT: the request in flight is answered, then the server exits 0.",
    )

    def add(flag: str, env: str, default: object, help: str, shown: str = "", **kwargs: object) -> None:
        parser.add_argument(
            flag,
            default=_env(env, default),
            help=f"{help} (env {env}, default: {shown or default})",
            **kwargs,  # type: ignore[arg-type]
        )

    add("--bind", "MEMLOOKUP_BIND", "127.0.0.1",
        "address to listen on: an IPv4 or IPv6 address, or * for every interface", metavar="ADDR")
    add("--port", "MEMLOOKUP_PORT", DEFAULT_PORT,
        "TCP port to listen on; 0 picks a free one and logs it", type=int, metavar="N")
    add("--log-level", "MEMLOOKUP_LOG_LEVEL", "info", "logging threshold", choices=LOG_LEVELS)
    add("--max-key-bytes", "MEMLOOKUP_MAX_KEY_BYTES", limits.MAX_KEY_BYTES,
        "longest key in UTF-8 bytes", type=int, metavar="N")
    add("--max-value-bytes", "MEMLOOKUP_MAX_VALUE_BYTES", limits.MAX_VALUE_BYTES,
        "longest value in UTF-8 bytes", type=int, metavar="N")
    add("--max-batch-keys", "MEMLOOKUP_MAX_BATCH_KEYS", limits.MAX_BATCH_KEYS,
        "most keys in one mget or mset", type=int, metavar="N")
    add("--max-message-bytes", "MEMLOOKUP_MAX_MESSAGE_BYTES", limits.MAX_MESSAGE_BYTES,
        "largest request message (ZMQ_MAXMSGSIZE); a larger one drops the connection", type=int, metavar="N")
    add("--max-scan-count", "MEMLOOKUP_MAX_SCAN_COUNT", limits.MAX_SCAN_COUNT,
        "cap on a keys request's page size hint", type=int, metavar="N")
    add("--max-pattern-bytes", "MEMLOOKUP_MAX_PATTERN_BYTES", limits.MAX_PATTERN_BYTES,
        "longest keys glob pattern in UTF-8 bytes", type=int, metavar="N")
    add("--max-reply-bytes", "MEMLOOKUP_MAX_REPLY_BYTES", limits.MAX_REPLY_BYTES,
        "largest reply (a batch's replies together); a request needing a larger one is refused "
        "before it is built (at least 8192)", type=int, metavar="N")
    add("--max-peer-output-bytes", "MEMLOOKUP_MAX_PEER_OUTPUT_BYTES", limits.MAX_PEER_OUTPUT_BYTES,
        "reply bytes queued for one client that does not read them before it is disconnected "
        "(replies up to 8 KiB are not counted)", type=int, metavar="N")
    add("--max-output-bytes", "MEMLOOKUP_MAX_OUTPUT_BYTES", limits.MAX_OUTPUT_BYTES,
        "reply bytes queued for all clients together; past it the one with the most is disconnected",
        type=int, metavar="N")
    add("--curve-secret-key", "MEMLOOKUP_CURVE_SECRET_KEY", None,
        "encrypt every connection with CurveZMQ using this key pair (a NAME.key_secret file "
        "from memlookup-keygen)", metavar="FILE")
    add("--authorized-keys", "MEMLOOKUP_AUTHORIZED_KEYS", None,
        "with --curve-secret-key: accept only clients whose public key is a *.key file in DIR "
        "(re-read when it changes)", metavar="DIR")
    add("--client-key", "MEMLOOKUP_CLIENT_KEY", None,
        "with --curve-secret-key and --join: the key pair (a NAME.key_secret file) this node uses to reach "
        "the other nodes, whose --authorized-keys must hold NAME.key", shown="the --curve-secret-key pair",
        metavar="FILE")
    parser.add_argument("--allow", action="append", default=[], metavar="NET",
                        help="also accept peers from this address or CIDR network (repeatable; without "
                        "keys only loopback peers are accepted otherwise) (env MEMLOOKUP_ALLOW, comma "
                        "separated, default: none)")
    parser.add_argument("--insecure-allow-all", action="store_true",
                        default=os.environ.get("MEMLOOKUP_INSECURE_ALLOW_ALL", "") not in ("", "0"),
                        help="accept peers from any address, even without keys: anyone who can reach "
                        "the port can read and change everything (env MEMLOOKUP_INSECURE_ALLOW_ALL=1)")
    add("--max-memory", "MEMLOOKUP_MAX_MEMORY", "0",
        "most memory the server may use, in bytes or with a suffix (100mb, 2gb; k/m/g are "
        "powers of 1000, kb/mb/gb of 1024); 0 means no limit", metavar="BYTES")
    add("--eviction", "MEMLOOKUP_EVICTION", "noeviction",
        "what happens at --max-memory: refuse writes, evict the least recently used keys, or "
        "evict the keys closest to expiring", choices=tuple(EVICTION_POLICIES))
    add("--metrics-port", "MEMLOOKUP_METRICS_PORT", 0,
        "serve Prometheus metrics over HTTP on this port at the --bind address (0: off)", type=int, metavar="N")
    parser.add_argument("--data-dir", default=next(filter(None, map(os.environ.get, DATA_DIR_ENV)), None),
                        metavar="DIR", help="keep the table in this directory so it survives restarts and crashes; "
                        "without it the server is purely in memory (env MEMLOOKUP_DATA_DIR, or the older "
                        "SERVER_DATA_DIR when that is not set; default: None)")
    add("--fsync", "MEMLOOKUP_FSYNC", "everysec",
        "with --data-dir: always = a write is on disk before its reply (concurrent writes share "
        "one fsync); everysec = a crash of the process loses nothing acknowledged, a power loss "
        "about a second; no = the operating system decides", choices=tuple(FSYNC_POLICIES))
    add("--compact-after-bytes", "MEMLOOKUP_COMPACT_AFTER_BYTES", COMPACT_AFTER_BYTES,
        "with --data-dir: rewrite the journal as a snapshot once it is larger than this and "
        "than the last snapshot", type=int, metavar="N")
    parser.add_argument("--repair", action="store_true",
                        default=str(_env("MEMLOOKUP_REPAIR", "")).lower() in ("1", "yes", "true"),
                        help="with --data-dir: if a data file is corrupt, keep the valid part before the "
                             "damage, drop the rest and say how much, instead of refusing to start "
                             "(env MEMLOOKUP_REPAIR=1, default: off)")
    parser.add_argument("--node-name", default=_env("MEMLOOKUP_NODE_NAME", None), metavar="NAME",
                        help="this node's name, which survives restarts (a compose service or StatefulSet pod "
                        "name): it names the versions of the writes this node applies, and the node in a "
                        "cluster, where keys are placed by node names (env MEMLOOKUP_NODE_NAME, default: the "
                        "host name)")
    add("--tombstone-grace-s", "MEMLOOKUP_TOMBSTONE_GRACE_S", TOMBSTONE_GRACE_S,
        "seconds a delete's tombstone is kept, so that a replica that missed the delete cannot bring the "
        "key back (Cassandra's gc_grace_seconds); a node of a cluster (--join) away for longer sets its data "
        "aside when it starts, and joins as a new node",
        type=float, metavar="S")
    add("--advertise", "MEMLOOKUP_ADVERTISE", "",
        "HOST[:PORT] where clients and the other nodes reach this node; without a port, the one bound",
        shown="NODE_NAME and the bound port", metavar="HOST:PORT")
    add("--join", "MEMLOOKUP_JOIN", "",
        "comma-separated addresses of nodes of the cluster to join (this node's own address may be among "
        "them); the nodes then keep the membership and move keys when a node joins or leaves; without it "
        "the server is a cluster of one", shown="none", metavar="SEEDS")
    add("--replicas", "MEMLOOKUP_REPLICAS", 2,
        "with --join: copies of each key in the cluster; every node of a cluster must have the same",
        type=int, metavar="R")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def parse_config(argv: list[str] | None = None) -> ServerConfig:
    """Parse flags (and environment) into a :class:`ServerConfig`; exits 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = ServerConfig(
            bind=args.bind,
            port=int(args.port),
            log_level=str(args.log_level).lower(),
            metrics_port=int(args.metrics_port),
            limits=Limits(
                max_key_bytes=int(args.max_key_bytes),
                max_value_bytes=int(args.max_value_bytes),
                max_batch_keys=int(args.max_batch_keys),
                max_message_bytes=int(args.max_message_bytes),
                max_scan_count=int(args.max_scan_count),
                max_pattern_bytes=int(args.max_pattern_bytes),
                max_reply_bytes=int(args.max_reply_bytes),
                max_peer_output_bytes=int(args.max_peer_output_bytes),
                max_output_bytes=int(args.max_output_bytes),
            ),
            curve_secret_key=args.curve_secret_key,
            authorized_keys=args.authorized_keys,
            client_key=args.client_key or None,
            allow=args.allow or [a for a in os.environ.get("MEMLOOKUP_ALLOW", "").split(",") if a.strip()],
            insecure_allow_all=bool(args.insecure_allow_all),
            max_memory_bytes=parse_bytes(str(args.max_memory)),
            eviction=str(args.eviction),
            data_dir=args.data_dir or None,
            fsync=str(args.fsync).lower(),
            repair=bool(args.repair),
            compact_after_bytes=int(args.compact_after_bytes),
            node_name=str(args.node_name or socket.gethostname()),
            tombstone_grace_s=float(args.tombstone_grace_s),
            advertise=str(args.advertise),
            join=[seed.strip() for seed in str(args.join).split(",") if seed.strip()],
            replicas=int(args.replicas),
        )
    except ValueError as exc:
        parser.error(f"bad setting: {exc}")
    try:
        parse_networks(config.allow)
    except ValueError as exc:
        parser.error(str(exc))
    if config.authorized_keys and not config.curve_secret_key:
        parser.error("--authorized-keys needs --curve-secret-key (clients are known by their CURVE keys)")
    if config.client_key and not config.curve_secret_key:
        parser.error("--client-key needs --curve-secret-key (the nodes reach each other with CURVE only when "
                     "they serve with it)")
    if config.eviction not in EVICTION_POLICIES:
        parser.error(f"eviction policy {config.eviction!r} is not one of {', '.join(EVICTION_POLICIES)}")
    if not 0 <= config.port < 65536:
        parser.error(f"port {config.port} is not from 0 to 65535")
    if not 0 <= config.metrics_port < 65536:
        parser.error(f"metrics port {config.metrics_port} is not from 0 (off) to 65535")
    if config.log_level not in LOG_LEVELS:
        parser.error(f"log level {config.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if config.fsync not in FSYNC_POLICIES:
        parser.error(f"fsync policy {config.fsync!r} is not one of {', '.join(FSYNC_POLICIES)}")
    if config.replicas < 1:
        parser.error(f"replicas must be at least 1, not {config.replicas}")
    try:
        for address in (*config.join, config.advertise or config.node_name):
            split_node(address)
    except ValueError as exc:
        parser.error(str(exc))
    if config.compact_after_bytes < 1:
        parser.error(f"compact-after-bytes must be at least 1, not {config.compact_after_bytes}")
    if not config.node_name or len(config.node_name.encode("utf-8", "surrogatepass")) > limits.MAX_NODE_NAME_BYTES:
        parser.error(f"node name must be 1 to {limits.MAX_NODE_NAME_BYTES} bytes, not {config.node_name!r}")
    if not (math.isfinite(config.tombstone_grace_s) and config.tombstone_grace_s > 0):
        parser.error(f"tombstone-grace-s must be a number of seconds above 0, not {config.tombstone_grace_s}")
    for name, value in vars(config.limits).items():
        if value < 1:
            parser.error(f"{name.replace('_', '-')} must be at least 1, not {value}")
    budgets = config.limits
    if budgets.max_reply_bytes < limits.SMALL_REPLY_BYTES:
        parser.error(f"max-reply-bytes must be at least {limits.SMALL_REPLY_BYTES}, not {budgets.max_reply_bytes}")
    if not budgets.max_reply_bytes <= budgets.max_peer_output_bytes <= budgets.max_output_bytes:
        parser.error("the output limits must grow: max-reply-bytes <= max-peer-output-bytes <= max-output-bytes "
                     f"(got {budgets.max_reply_bytes}, {budgets.max_peer_output_bytes}, {budgets.max_output_bytes})")
    return config
