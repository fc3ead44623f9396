"""``python -m client`` / ``memlookup``: the command-line client.

A thin layer over :class:`client.Client` (one node) and
:class:`client.ClusterClient` (several: ``n1,n2,n3``, or a name with several
addresses): parse the words (:mod:`client.cli_parser`, from the table of
operations), call the client method the command's row names, print the
answer. It never touches a socket itself.

Writes print nothing on success (``--json`` prints an object for every
command). Exit codes: :data:`client.cli_parser.EXIT_STATUS`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from client.cli_cluster import cluster_rebalance, open_table
from client.cli_parser import (
    EXIT_CLOSED_PIPE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    UsageError,
    build_parser,
    call_arguments,
    parse_args,
    plain_args,
)
from common.errors import InvalidRequestError, MemlookupError, NodeUnavailableError
from common.ops import OPS, Op

if TYPE_CHECKING:
    from client.cli_parser import Args

#: Prints a result: the object for ``--json``, else the text (None: nothing).
Emit = Callable[[Any, str | None], None]


class _Outcome(Exception):
    """Ends a command with a message on stderr and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _stdin_reader(op: Op) -> Callable[[bool], str]:
    def read(explicit: bool) -> str:
        if not explicit and sys.stdin.isatty():
            raise _Outcome(f"{op.name} needs a VALUE, and standard input is a terminal: give VALUE after the "
                           f"KEY, or send it on standard input (memlookup NODE {op.name} KEY < FILE); "
                           "'-' reads the terminal up to Ctrl-D", EXIT_USAGE)
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Outcome(f"standard input is not UTF-8 text (byte {exc.start})", EXIT_USAGE) from None

    return read


# -- what each command prints ------------------------------------------------------------------


def _show_get(args: Args, value: str | None, emit: Emit) -> int:
    emit({"key": args.key, "value": value}, value)
    if value is None:
        raise _Outcome("not found", EXIT_NOT_FOUND)
    return EXIT_OK


def _show_set(args: Args, stored: bool, emit: Emit) -> int:
    emit({"key": args.key, "stored": stored}, None)
    if not stored:
        raise _Outcome("not stored: key " + ("exists" if args.nx else "does not exist"), EXIT_NOT_FOUND)
    return EXIT_OK


def _show_del(args: Args, deleted: bool, emit: Emit) -> int:
    emit({"key": args.key, "deleted": deleted}, None)
    if not deleted:
        raise _Outcome("not found", EXIT_NOT_FOUND)
    return EXIT_OK


def _show_exists(args: Args, present: bool, emit: Emit) -> int:
    emit({"key": args.key, "exists": present}, "true" if present else "false")
    return EXIT_OK if present else EXIT_NOT_FOUND


def _show_mget(args: Args, values: list[str | None], emit: Emit) -> int:
    emit(dict(zip(args.keys, values, strict=True)), "\n".join("(nil)" if v is None else v for v in values))
    return EXIT_OK


def _show_mset(args: Args, _: None, emit: Emit) -> int:
    emit({"stored": len(args.pairs) // 2}, None)
    return EXIT_OK


def _show_ttl(args: Args, seconds: float, emit: Emit) -> int:
    if seconds == -2:
        emit({"key": args.key, "ttl_s": None}, None)
        raise _Outcome("not found", EXIT_NOT_FOUND)
    emit({"key": args.key, "ttl_s": seconds}, "-1" if seconds == -1 else f"{seconds:.3f}")
    return EXIT_OK


def _show_incr(args: Args, value: int, emit: Emit) -> int:
    emit({"key": args.key, "value": value}, str(value))
    return EXIT_OK


def _show_cas(args: Args, stored: bool, emit: Emit) -> int:
    emit({"key": args.key, "stored": stored}, None)
    if not stored:
        raise _Outcome("not stored: the value is not the expected one", EXIT_NOT_FOUND)
    return EXIT_OK


def _show_ping(args: Args, _: bool, emit: Emit) -> int:
    emit({"pong": True}, "PONG")
    return EXIT_OK


def _show_stats(args: Args, stats: dict[str, Any], emit: Emit) -> int:
    emit(stats, "\n".join(f"{name}: {value}" for name, value in _flatten(stats)))
    return EXIT_OK


def _flatten(stats: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for name, value in stats.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{name}."))
        else:
            rows.append((prefix + name, value))
    return rows


def _show_result(args: Args, result: Any, emit: Emit) -> int:
    """A command with no way of its own: the result as it is (a new op's, until it gets one)."""
    emit(result, None if result is None else str(result))
    return EXIT_OK


#: How each command shows its client method's result, where it needs a way
#: of its own (others: :func:`_show_result`; ``keys`` streams, below).
_SHOW: dict[str, Callable[[Args, Any, Emit], int]] = {
    "get": _show_get, "set": _show_set, "del": _show_del, "exists": _show_exists, "mget": _show_mget,
    "mset": _show_mset, "ttl": _show_ttl, "incr": _show_incr, "cas": _show_cas, "ping": _show_ping,
    "stats": _show_stats,
}


def _list_keys(table: Any, kwargs: dict[str, Any], as_json: bool, emit: Emit) -> int:
    """Every matching key, written as each page arrives (``--json``: one array at the end)."""
    pages = table.keys(**kwargs)
    if as_json:
        emit(list(pages), None)
        return EXIT_OK
    write = sys.stdout.write
    for key in pages:
        write(key + "\n")
    return EXIT_OK


def _rebalance(table: Any, emit: Emit) -> int:
    report = cluster_rebalance(table)
    emit(report, f"examined {report['examined']} copies: copied {report['copied']}, "
                 f"removed {report['removed']} from non-owners")
    if report["failures"]:
        raise _Outcome("incomplete, run it again: " + "; ".join(report["failures"][:3]), EXIT_UNAVAILABLE)
    return EXIT_OK


def _leave(args: Args, table: Any, emit: Emit) -> int:
    from client.membership import wait_until_left

    try:
        answer = wait_until_left(table, args.wait_s)
    except TimeoutError as exc:
        raise _Outcome(str(exc), EXIT_NOT_FOUND) from None
    emit(answer, f"left: moved {answer['pushed']} records to their new owners")
    return EXIT_OK


def _ready(args: Args, table: Any, emit: Emit) -> int:
    from client.membership import NODE
    from common.membership import READY

    answer = table._execute(NODE)
    emit(answer, answer["state"])
    return EXIT_OK if answer["state"] == READY else EXIT_NOT_FOUND


#: The commands that are procedures rather than one op's row (client.cli_parser.PROCEDURES).
_PROCEDURES: dict[str, Callable[[Args, Any, Emit], int]] = {
    "rebalance": lambda args, table, emit: _rebalance(table, emit), "leave": _leave, "ready": _ready,
}


def _run(args: Args, table: Any, emit: Emit) -> int:
    """Call the client method of the command's row with its parsed words, and show the result."""
    if args.command in _PROCEDURES:
        return _PROCEDURES[args.command](args, table, emit)
    op = OPS[args.command]
    try:
        kwargs = call_arguments(op, args, _stdin_reader(op))
    except UsageError as exc:
        raise _Outcome(str(exc), EXIT_USAGE) from None
    if op.name == "keys":
        return _list_keys(table, kwargs, args.json, emit)
    return _SHOW.get(op.name, _show_result)(args, getattr(table, op.method)(**kwargs), emit)


def _pipe(table: Any) -> int:
    from client import bulk

    summary = bulk.run(table, sys.stdin.buffer, sys.stderr, progress=sys.stderr.isatty())
    return EXIT_REFUSED if summary.errors else EXIT_OK


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _parse(words: list[str]) -> Args:
    plain = plain_args(words)
    if plain is not None:
        return plain
    try:
        args = parse_args(words)
        if args.pipe and args.command:
            build_parser().error("--pipe reads its commands from standard input; give no COMMAND")
        if not args.pipe and not args.command:
            build_parser().error("a COMMAND is required (or --pipe to read commands from standard input)")
    except SystemExit as exc:
        if exc.code == EXIT_USAGE and words[:1] == ["keygen"]:
            print("hint: keys are made by memlookup-keygen DIR [NAME] (python -m client.keygen)", file=sys.stderr)
        raise
    return args


def _main(words: list[str]) -> int:
    args = _parse(words)

    def emit(as_json: object, text: str | None) -> None:
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
    if args.command in ("leave", "ready") and hasattr(table, "placement"):
        _fail(f"{args.command} asks one node; give a single NODE", EXIT_USAGE)
    if args.pipe and hasattr(table, "placement"):
        _fail("--pipe talks to one node; give a single NODE", EXIT_USAGE)
    try:
        with table:
            code = _pipe(table) if args.pipe else _run(args, table, emit)
            sys.stdout.flush()  # here, so that a closed pipe is met inside main()
            return code
    except _Outcome as outcome:
        _fail(str(outcome), outcome.code)
    except NodeUnavailableError as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except InvalidRequestError as exc:
        _fail(str(exc), EXIT_REFUSED if exc.code is not None else EXIT_USAGE)
    except MemlookupError as exc:
        _fail(str(exc), EXIT_REFUSED)


def main(argv: list[str] | None = None) -> int:
    """Run one ``memlookup`` command line; returns the exit status (:data:`client.cli_parser.EXIT_STATUS`)."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as a Unix tool does.
        # Standard output goes to /dev/null so that the interpreter's last
        # flush of what is still buffered does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
