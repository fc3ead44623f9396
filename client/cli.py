"""``python -m client`` / ``memlookup``: the command-line client.

A thin layer over :class:`client.Client` (one node) and
:class:`client.ClusterClient` (several: ``n1,n2,n3``, or a name with several
addresses): parse the words, make one library call, print the answer. It
never touches a socket itself.

Writes print nothing on success (``--json`` prints an object for every
command). Exit codes: 0 success; 1 not found, or a condition (nx, xx, cas) not met;
2 bad usage; 3 the server refused the request; 4 the node did not answer.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, NoReturn

from client.cli_cluster import cluster_rebalance, open_table, with_nodes
from common.errors import InvalidRequestError, MemlookupError, NodeUnavailableError

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNAVAILABLE = 4


class _Outcome(Exception):
    """Ends a command with a message on stderr and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _add_connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    def default(env: str, value: object) -> object:
        return argparse.SUPPRESS if suppress else os.environ.get(env, value)

    parser.add_argument("--timeout", type=_positive_float, default=default("MEMLOOKUP_TIMEOUT", 1.0),
                        metavar="S", help="seconds to wait for each attempt (env MEMLOOKUP_TIMEOUT, default: 1.0)")
    parser.add_argument("--retries", type=_count, default=default("MEMLOOKUP_RETRIES", 2), metavar="N",
                        help="resends after a timeout (env MEMLOOKUP_RETRIES, default: 2)")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False,
                        help="print results as JSON (a missing value is null)")
    parser.add_argument("--server-key", default=default("MEMLOOKUP_SERVER_KEY", None), metavar="FILE",
                        help="the server's CurveZMQ public key (its .key file): encrypt, and check it is that "
                        "server (env MEMLOOKUP_SERVER_KEY)")
    parser.add_argument("--client-key", default=default("MEMLOOKUP_CLIENT_KEY", None), metavar="FILE",
                        help="our key pair (a .key_secret file from memlookup-keygen), for servers with "
                        "--authorized-keys (env MEMLOOKUP_CLIENT_KEY)")


#: Every COMMAND, in the order --help lists them.
COMMANDS = ("set", "get", "del", "exists", "mget", "mset", "keys", "ttl", "incr", "cas", "ping", "stats",
            "rebalance")


def build_parser(only: str | None = None,
                 parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``memlookup`` argument parser (also the source of its man page).

    ``only``: build just that COMMAND's subparser -- argparse costs a
    one-shot command several milliseconds per subparser it builds.
    """
    parser = parser_class(
        prog="memlookup",
        description="Store and fetch strings in a memlookup server.",
        epilog=(
            "NODE is host, host:port, tcp://host:port or [ipv6]:port (default port 7400), or several "
            "separated by commas; a name resolving to several addresses means all of them. "
            "With --nodes or MEMLOOKUP_NODES, NODE may be left out. "
            "Exit status: 0 success; 1 not found or condition not met; 2 bad usage; "
            "3 refused by the server; 4 no reply from the node. "
            "Put -- before a key or value that begins with '-'."
        ),
    )
    _add_connection_options(parser, suppress=False)
    parser.add_argument("--nodes", metavar="N1,N2,...", default=os.environ.get("MEMLOOKUP_NODES"),
                        help="the nodes, when NODE is left out (env MEMLOOKUP_NODES)")
    parser.add_argument("--replicas", type=_count, default=os.environ.get("MEMLOOKUP_REPLICAS", 2), metavar="R",
                        help="copies of each key over several nodes (env MEMLOOKUP_REPLICAS, default: 2)")
    parser.add_argument("node", metavar="NODE", help="the server, or servers, to talk to")
    parser.add_argument("--pipe", action="store_true",
                        help="bulk load: run the commands on standard input, one a line (COMMAND words, "
                             "shell quoting), batched and pipelined; print errors and a summary")
    _add_commands(parser.add_subparsers(dest="command", metavar="COMMAND"), only)
    return parser


class _Unsure(Exception):
    pass


class _LeanParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise _Unsure(message)


def _guess_command(words: list[str]) -> str | None:
    """The COMMAND in ``words`` (the second positional), if it is plainly there."""
    positionals: list[str] = []
    words_iter = iter(words)
    for word in words_iter:
        if word in ("--timeout", "--retries", "--nodes", "--replicas"):
            next(words_iter, None)
        elif word.startswith("-"):
            if word in ("-h", "--help", "--"):
                return None
        else:
            positionals.append(word)
            if len(positionals) == 2:
                return word if word in COMMANDS else None
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse with a parser of just the command given, falling back to the
    whole parser (for help, and for the exact error message of bad usage)."""
    words = sys.argv[1:] if argv is None else list(argv)
    name = _guess_command(words)
    if name is not None:
        lean = build_parser(only=name, parser_class=_LeanParser)
        try:
            args = lean.parse_args(words)
            if args.command == name:
                return args
        except _Unsure:
            pass
    return build_parser().parse_args(words)


def command_parsers(command_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
                    ) -> dict[str, argparse.ArgumentParser]:
    """Each COMMAND's own parser, by name (``--pipe`` parses its lines with them)."""
    commands = argparse.ArgumentParser(prog="memlookup").add_subparsers(parser_class=command_class)
    _add_commands(commands)
    return dict(commands.choices)


class _Skipped:
    """Stands in for the subparser of a command that ``only`` leaves out."""

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_mutually_exclusive_group(self) -> "_Skipped":
        return self


def _add_commands(commands: Any, only_command: str | None = None) -> None:
    def command(name: str, help: str) -> Any:
        if only_command is not None and name != only_command:
            return _Skipped()
        sub = commands.add_parser(name, help=help, description=help)
        _add_connection_options(sub, suppress=True)
        return sub

    sub = command("set", "store VALUE under KEY (VALUE omitted or - reads standard input)")
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("value", metavar="VALUE", nargs="?", default="-")
    sub.add_argument("--ttl", type=_positive_float, metavar="S", help="expire after S seconds")
    only = sub.add_mutually_exclusive_group()
    only.add_argument("--nx", action="store_true", help="only if KEY does not exist")
    only.add_argument("--xx", action="store_true", help="only if KEY exists")

    command("get", "print the value of KEY").add_argument("key", metavar="KEY")
    command("del", "remove KEY").add_argument("key", metavar="KEY")
    command("exists", "exit 0 if KEY exists, 1 if not").add_argument("key", metavar="KEY")
    command("mget", "print the values of several keys, one per line ((nil) if missing)").add_argument(
        "keys", metavar="KEY", nargs="+")

    sub = command("mset", "store several pairs at once: all or none")
    sub.add_argument("pairs", metavar="KEY VALUE", nargs="+")
    sub.add_argument("--ttl", type=_positive_float, metavar="S", help="expire after S seconds")

    sub = command("keys", "list the keys matching a glob PATTERN (*, ?, [abc], [!abc])")
    sub.add_argument("pattern", metavar="PATTERN", nargs="?", default="*")
    sub.add_argument("--count", type=_count, default=1000, metavar="N", help="keys per page fetched (default: 1000)")

    command("ttl", "print the seconds KEY has left (-1: no expiry)").add_argument("key", metavar="KEY")

    sub = command("incr", "add DELTA (default 1) to the integer at KEY and print the result")
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("delta", metavar="DELTA", nargs="?", type=int, default=1)

    sub = command("cas", "set KEY to NEW only if its value is EXPECTED")
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("expected", metavar="EXPECTED")
    sub.add_argument("value", metavar="NEW")
    sub.add_argument("--ttl", type=_positive_float, metavar="S", help="expire after S seconds")

    command("ping", "check that the node (every node) answers")
    command("stats", "print the node's counters (of several nodes: each one's, and their total)")
    sub = command("rebalance", "move every key to its owners among the given nodes and restore the replicas; "
                               "safe to re-run, and writes made meanwhile are kept")
    sub.add_argument("--from", dest="leaving", metavar="N1,...",
                     help="nodes being removed: move all their keys to the given nodes")


def _read_stdin() -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Outcome(f"standard input is not UTF-8 text (byte {exc.start})", EXIT_USAGE) from None


def _run(args: argparse.Namespace, table: Any, emit: Callable[[Any, str], None]) -> int:
    command = args.command
    if command == "get":
        value = table.get(args.key)
        emit({"key": args.key, "value": value}, value)
        if value is None:
            raise _Outcome("not found", EXIT_NOT_FOUND)
    elif command == "set":
        value = _read_stdin() if args.value == "-" else args.value
        stored = table.set(args.key, value, ttl_s=args.ttl, nx=args.nx, xx=args.xx)
        emit({"key": args.key, "stored": stored}, None)
        if not stored:
            raise _Outcome("not stored: key " + ("exists" if args.nx else "does not exist"), EXIT_NOT_FOUND)
    elif command == "del":
        deleted = table.delete(args.key)
        emit({"key": args.key, "deleted": deleted}, None)
        if not deleted:
            raise _Outcome("not found", EXIT_NOT_FOUND)
    elif command == "exists":
        present = table.exists(args.key)
        emit({"key": args.key, "exists": present}, "true" if present else "false")
        return EXIT_OK if present else EXIT_NOT_FOUND
    elif command == "mget":
        values = table.mget(args.keys)
        emit(dict(zip(args.keys, values)), "\n".join("(nil)" if v is None else v for v in values))
    elif command == "mset":
        if len(args.pairs) % 2:
            raise _Outcome("mset takes KEY VALUE pairs; the last key has no value", EXIT_USAGE)
        pairs = dict(zip(args.pairs[::2], args.pairs[1::2]))
        table.mset(pairs, ttl_s=args.ttl)
        emit({"stored": len(pairs)}, None)
    elif command == "keys":
        keys = list(table.keys(args.pattern, count=args.count or 1000))
        emit(keys, "\n".join(keys) if keys else None)
    elif command == "ttl":
        seconds = table.ttl(args.key)
        if seconds == -2:
            emit({"key": args.key, "ttl_s": None}, None)
            raise _Outcome("not found", EXIT_NOT_FOUND)
        emit({"key": args.key, "ttl_s": seconds}, "-1" if seconds == -1 else f"{seconds:.3f}")
    elif command == "incr":
        result = table.incr(args.key, args.delta)
        emit({"key": args.key, "value": result}, str(result))
    elif command == "cas":
        stored = table.cas(args.key, args.expected, args.value, ttl_s=args.ttl)
        emit({"key": args.key, "stored": stored}, None)
        if not stored:
            raise _Outcome("not stored: the value is not the expected one", EXIT_NOT_FOUND)
    elif command == "ping":
        table.ping()
        emit({"pong": True}, "PONG")
    elif command == "rebalance":
        report = cluster_rebalance(table)
        emit(report, f"examined {report['examined']} copies: copied {report['copied']}, "
                     f"removed {report['removed']} from non-owners, {report['conflicts']} conflicts")
        if report["failures"]:
            raise _Outcome("incomplete, run it again: " + "; ".join(report["failures"][:3]), EXIT_UNAVAILABLE)
    elif command == "stats":
        stats = table.stats()
        emit(stats, "\n".join(f"{name}: {value}" for name, value in _flatten(stats)))
    return EXIT_OK


def _pipe(table: Any) -> int:
    from client import bulk

    summary = bulk.run(table, command_parsers(bulk.LineParser), sys.stdin.buffer, sys.stderr,
                       progress=sys.stderr.isatty())
    return EXIT_REFUSED if summary.errors else EXIT_OK


def _flatten(stats: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for name, value in stats.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{name}."))
        else:
            rows.append((prefix + name, value))
    return rows


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(with_nodes(sys.argv[1:] if argv is None else list(argv), COMMANDS))
    except SystemExit as exc:
        if exc.code == EXIT_USAGE and "keygen" in (sys.argv[1:] if argv is None else argv)[:1]:
            print("hint: keys are made by memlookup-keygen DIR [NAME] (python -m client.keygen)", file=sys.stderr)
        raise
    if args.pipe and args.command:
        build_parser().error("--pipe reads its commands from standard input; give no COMMAND")
    if not args.pipe and not args.command:
        build_parser().error("a COMMAND is required (or --pipe to read commands from standard input)")

    def emit(as_json: Any, text: str | None) -> None:
        if args.json:
            import json

            print(json.dumps(as_json, ensure_ascii=False))
        elif text is not None:
            print(text)

    try:
        table = open_table(args.node, int(args.replicas), args.timeout, int(args.retries),
                           leaving=getattr(args, "leaving", None),
                           server_key=args.server_key or None, client_key=args.client_key or None)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    if args.command == "rebalance" and not hasattr(table, "placement"):
        _fail("rebalance needs the cluster's nodes: NODE1,NODE2,...", EXIT_USAGE)
    if args.pipe and hasattr(table, "placement"):
        _fail("--pipe talks to one node; give a single NODE", EXIT_USAGE)
    try:
        with table:
            if args.pipe:
                return _pipe(table)
            return _run(args, table, emit)
    except _Outcome as outcome:
        _fail(str(outcome), outcome.code)
    except NodeUnavailableError as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except InvalidRequestError as exc:
        _fail(str(exc), EXIT_REFUSED if exc.code is not None else EXIT_USAGE)
    except MemlookupError as exc:
        _fail(str(exc), EXIT_REFUSED)
