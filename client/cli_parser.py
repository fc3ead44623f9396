"""The ``memlookup`` command line's grammar, built from the table of operations.

Each COMMAND's parser comes from its row in :mod:`common.ops`: the row's
parameters become positional words (or an option, where the row gives a
``flag``), its options become ``--ttl``, ``--nx``, ``--xx`` (with their
exclusions), and :func:`call_arguments` turns the parsed words back into the
keyword arguments of the client method the row names. ``--pipe`` reads its
lines with the same parsers (:func:`command_parsers`).

Where the COMMAND is in argv is found once, by :func:`parse_args`, from the
parser's own list of options (which of them take a value); the same scan
puts ``--nodes`` in NODE's place when NODE is left out, lower-cases the
COMMAND (``GET`` is ``get``, as in ``--pipe``), and suggests a command for a
misspelt one. Only the given COMMAND's parser is then built: argparse costs a
one-shot command a few milliseconds per subparser.

The plainest command lines, ``NODE COMMAND WORD...`` with no option, are read
by :func:`plain_args` without argparse at all: importing argparse (with the
gettext and locale it loads) and building even one COMMAND's parser was 5 of
the 13 ms a one-shot ``get`` spent above ``import zmq, msgpack`` in the best
of 40 runs, 11 of 24 at the median (docs/BENCHMARKS.md). So argparse is imported in the functions that build
parsers, not here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NoReturn

from common import __version__
from common.ops import OPS, OPS_TABLE, Kind, Op, Param

if TYPE_CHECKING:
    import argparse
    from typing import TypeAlias

    #: A parsed command line: argparse's, or :func:`plain_args`' (the same attributes).
    Args: TypeAlias = argparse.Namespace | SimpleNamespace

#: The commands that are procedures of the client rather than one op's row: what each does.
PROCEDURES: dict[str, str] = {
    "rebalance": "move every key to its owners among the given nodes and restore the replicas; "
                 "safe to re-run, and writes made meanwhile are kept",
    "leave": "make the node leave its cluster (it keeps the membership: --join) and wait until it has moved "
             "its keys to their new owners; a Kubernetes preStop hook",
    "ready": "whether the node is ready: it has joined its cluster and holds its keys; a readiness probe",
}

#: Every COMMAND, in the order ``--help`` lists them: the table's CLI rows, then the procedures.
COMMANDS: tuple[str, ...] = (*(op.name for op in OPS_TABLE if op.cli), *PROCEDURES)

#: How long ``leave`` waits for the node to have left, by default (seconds).
LEAVE_WAIT_S = 120.0

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNAVAILABLE = 4
#: Standard output closed before everything was written (``| head``): 128 + SIGPIPE, as a shell
#: reports a command that SIGPIPE killed.
EXIT_CLOSED_PIPE = 141

#: (status, meaning), for ``--help`` and the man page.
EXIT_STATUS: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_NOT_FOUND, "not found, or a condition not met (--nx, --xx, cas; exists: no such key; ready: the node "
                     "is not ready; leave: it has not left within --wait)"),
    (EXIT_USAGE, "bad usage"),
    (EXIT_REFUSED, "the server refused the request (--pipe: some line failed)"),
    (EXIT_UNAVAILABLE, "nothing listens at NODE, its name does not resolve, it refused the connection, or no "
                       "reply in time"),
    (EXIT_CLOSED_PIPE, "standard output was closed early (memlookup ... | head)"),
)

#: (command line, what it does), for ``--help`` and the man page.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("memlookup 127.0.0.1 set norway oslo", "store a value"),
    ("memlookup 127.0.0.1 get norway", "print it; exit 1 if there is none"),
    ("memlookup 127.0.0.1 set token abc --ttl 30", "a value that expires in 30 s"),
    ("memlookup 127.0.0.1 set report < report.txt", "the value from a file"),
    ("memlookup 127.0.0.1 keys 'user:*'", "the keys matching a glob"),
    ("memlookup n1,n2,n3 get norway", "three nodes, each key on two"),
    ("memlookup 127.0.0.1 --pipe < commands.txt", "bulk load, one command a line"),
)

#: What each command prints and how it exits, beyond its row's summary.
_OUTPUT = {
    "ping": "Prints PONG.",
    "get": "Prints the value; exits 1 with 'error: not found' if there is none.",
    "set": "Prints nothing; exits 1 if --nx or --xx prevented it.",
    "del": "Exits 1 if KEY did not exist.",
    "exists": "Prints true or false; exits 0 if KEY exists, 1 if not.",
    "mget": "Prints one line per key: its value, or (nil).",
    "mset": "Prints nothing.",
    "keys": "Prints every matching key, one a line, asking for page after page until the scan is done.",
    "ttl": "Prints the seconds left, or -1 if KEY never expires; exits 1 if KEY does not exist.",
    "incr": "A missing KEY counts as 0. Prints the new value.",
    "cas": "Exits 1 if the value was not EXPECTED (or KEY does not exist).",
    "stats": "Prints one 'name: value' line per counter (of several nodes: each one's, and their total).",
    "leave": "Prints the records it moved; exits 1 if the node has not left within --wait (saying why: an owner "
             "that does not take its keys), 3 if it keeps no membership.",
    "ready": "Prints the node's state (joining, ready, leaving, left); exits 0 if it is ready, 1 if not.",
}

NODE_NOTES = """\
NODE is host, host:port, tcp://host:port or [ipv6]:port (default port 7400),
or several separated by commas; a name resolving to several addresses means
all of them. With --nodes or MEMLOOKUP_NODES, NODE may be left out. Options
may also follow the COMMAND's words. Put -- before a key or value that
begins with '-'. Commands are case-insensitive (GET is get)."""


class UsageError(Exception):
    """Words that make no command (raised by :func:`call_arguments`, and by ``--pipe``'s parsers)."""


def positive_float(text: str) -> float:
    """argparse type: a number above 0 (seconds)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def whole_number(text: str, least: int = 0) -> int:
    """argparse type: a whole number of at least ``least`` (0 by default)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} must be {least} or more")
    return value


def _positive_int(text: str) -> int:
    return whole_number(text, least=1)


#: The argparse type of each kind of parameter (str where missing).
_TYPES: dict[Kind, Callable[[str], Any]] = {Kind.INT: int, Kind.COUNT: _positive_int}


#: The options the environment may set: destination -> (variable, default when it is not set).
_FROM_ENV: dict[str, tuple[str, object]] = {
    "timeout": ("MEMLOOKUP_TIMEOUT", 1.0),
    "retries": ("MEMLOOKUP_RETRIES", 2),
    "server_key": ("MEMLOOKUP_SERVER_KEY", None),
    "client_key": ("MEMLOOKUP_CLIENT_KEY", None),
    "nodes": ("MEMLOOKUP_NODES", None),
    "replicas": ("MEMLOOKUP_REPLICAS", 2),
}


def _from_env(dest: str) -> object:
    return os.environ.get(*_FROM_ENV[dest])


def _epilog() -> str:
    width = max(len(line) for line, _ in EXAMPLES) + 2
    examples = "\n".join(f"  {line:{width}}{what}" for line, what in EXAMPLES)
    statuses = "\n".join(f"  {status:<4}{meaning}" for status, meaning in EXIT_STATUS)
    return f"examples:\n{examples}\n\n{NODE_NOTES}\n\nexit status:\n{statuses}"


def _connection_options(parser: argparse.ArgumentParser, top_level: bool) -> None:
    """The options every command takes. On a COMMAND's parser they are hidden
    (they are the top level's, accepted after the COMMAND's words too) and
    leave the top level's value alone unless given."""
    import argparse

    def default(dest: str) -> object:
        return _from_env(dest) if top_level else argparse.SUPPRESS

    def shown(text: str) -> str:
        return text if top_level else argparse.SUPPRESS

    parser.add_argument("--timeout", type=positive_float, default=default("timeout"), metavar="S",
                        help=shown("seconds to wait for each attempt (env MEMLOOKUP_TIMEOUT, default: 1.0)"))
    parser.add_argument("--retries", type=whole_number, default=default("retries"), metavar="N",
                        help=shown("resends after a timeout (env MEMLOOKUP_RETRIES, default: 2)"))
    parser.add_argument("--json", action="store_true", default=False if top_level else argparse.SUPPRESS,
                        help=shown("print results as JSON (a missing value is null)"))
    parser.add_argument("--server-key", default=default("server_key"), metavar="FILE",
                        help=shown("the server's CurveZMQ public key (its .key file): encrypt, and check it is "
                                   "that server (env MEMLOOKUP_SERVER_KEY)"))
    parser.add_argument("--client-key", default=default("client_key"), metavar="FILE",
                        help=shown("our key pair (a .key_secret file from memlookup-keygen), for servers with "
                                   "--authorized-keys (env MEMLOOKUP_CLIENT_KEY)"))


def _top_level() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="memlookup",
        description="Store and fetch strings in a memlookup server.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # parse_args finds the COMMAND by the options' full names
    )
    _connection_options(parser, top_level=True)
    parser.add_argument("--nodes", metavar="N1,N2,...", default=_from_env("nodes"),
                        help="the nodes, when NODE is left out (env MEMLOOKUP_NODES)")
    parser.add_argument("--replicas", type=whole_number, default=_from_env("replicas"),
                        metavar="R", help="copies of each key over several nodes (env MEMLOOKUP_REPLICAS, default: 2)")
    parser.add_argument("--pipe", action="store_true",
                        help="bulk load: run the commands on standard input, one a line (COMMAND words, "
                             "shell quoting), batched and pipelined; print errors and a summary")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("node", metavar="NODE", help="the server, or servers, to talk to")
    return parser


def _add_param(parser: argparse.ArgumentParser, param: Param) -> None:
    kwargs: dict[str, Any] = {"metavar": param.metavar or param.name.upper(), "help": param.help or None}
    if param.kind in _TYPES:
        kwargs["type"] = _TYPES[param.kind]
    if param.flag:
        parser.add_argument(param.flag, dest=param.name, default=param.default, **kwargs)
        return
    if param.kind in (Kind.KEYS, Kind.PAIRS):
        kwargs["nargs"] = "+"
    elif param.stdin or param.default is not None:
        kwargs.update(nargs="?", default=param.default)
    parser.add_argument(param.name, **kwargs)


def _add_command(commands: Any, op: Op) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(op.name, help=op.summary,
                                                       description=f"{op.summary[:1].upper()}{op.summary[1:]}. "
                                                                   f"{_OUTPUT.get(op.name, '')}".strip())
    for param in op.params:
        if param.cli:
            _add_param(sub, param)
    groups: dict[frozenset[str], Any] = {}
    for option in op.options:
        flag = option.flag or "--" + option.name
        if option.kind == "ttl":
            sub.add_argument(flag, dest=option.name, type=positive_float, metavar=option.metavar or "S",
                             help=option.help)
            continue
        target: Any = sub
        if option.excludes:
            pair = frozenset((option.name, option.excludes))
            if pair not in groups:
                groups[pair] = sub.add_mutually_exclusive_group()
            target = groups[pair]
        target.add_argument(flag, dest=option.name, action="store_true", help=option.help)
    _connection_options(sub, top_level=False)
    return sub


def _add_procedure(commands: Any, name: str) -> None:
    summary = PROCEDURES[name]
    sub = commands.add_parser(name, help=summary, description=f"{summary[:1].upper()}{summary[1:]}. "
                                                              f"{_OUTPUT.get(name, '')}".strip())
    if name == "rebalance":
        sub.add_argument("--from", dest="leaving", metavar="N1,...",
                         help="nodes being removed: move all their keys to the given nodes")
    elif name == "leave":
        sub.add_argument("--wait", dest="wait_s", type=positive_float, default=LEAVE_WAIT_S, metavar="S",
                         help=f"seconds to wait for the node to leave (default: {LEAVE_WAIT_S:g})")
    _connection_options(sub, top_level=False)


def _add_commands(parser: argparse.ArgumentParser, only: str | None = None,
                  parser_class: type[argparse.ArgumentParser] | None = None) -> Any:
    kwargs: dict[str, Any] = {"dest": "command", "metavar": "COMMAND", "title": "commands"}
    if parser_class is not None:
        kwargs["parser_class"] = parser_class
    commands = parser.add_subparsers(**kwargs)
    for name in COMMANDS:
        if only is None or name == only:
            if name in PROCEDURES:
                _add_procedure(commands, name)
            else:
                _add_command(commands, OPS[name])
    return commands


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``memlookup`` argument parser (also the source of its man page);
    ``only``: with just that COMMAND's parser."""
    parser = _top_level()
    _add_commands(parser, only)
    return parser


def command_parsers(parser_class: type[argparse.ArgumentParser] | None = None,
                    ) -> dict[str, argparse.ArgumentParser]:
    """Each COMMAND's own parser, by name (``--pipe`` parses its lines with them);
    ``parser_class``: argparse.ArgumentParser's by default."""
    import argparse

    choices: dict[str, argparse.ArgumentParser] = _add_commands(
        argparse.ArgumentParser(prog="memlookup"), parser_class=parser_class).choices
    return choices


def suggestion(word: str) -> str:
    """`` (did you mean 'get'?)`` for a misspelt COMMAND, or ``""``."""
    from difflib import get_close_matches

    close = get_close_matches(word.lower(), COMMANDS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _scan(parser: argparse.ArgumentParser, words: list[str]) -> tuple[list[int], dict[str, Any]]:
    """The indices of the first two words that are neither options nor an
    option's value (NODE and COMMAND, or COMMAND and its first word when NODE
    is left out), and the options met before them by destination.

    Which options take a value is read from ``parser`` itself: the one list
    of them there is.
    """
    actions = {string: action for action in parser._actions for string in action.option_strings}
    positionals: list[int] = []
    seen: dict[str, Any] = {}
    index = 0
    while index < len(words) and len(positionals) < 2:
        word = words[index]
        if word == "--":
            positionals += range(index + 1, min(len(words), index + 3 - len(positionals)))
            break
        if word.startswith("-") and word != "-":
            name, has_value, value = word.partition("=")
            action = actions.get(name)
            if action is not None and action.nargs != 0 and not has_value:
                seen[action.dest] = words[index + 1] if index + 1 < len(words) else None
                index += 2
                continue
            if action is not None:
                seen[action.dest] = value if has_value else True
            index += 1
            continue
        positionals.append(index)
        index += 1
    return positionals, seen


def _usage_error(message: str) -> NoReturn:
    build_parser().error(message)


def plain_args(argv: list[str]) -> SimpleNamespace | None:
    """``NODE COMMAND WORD...``, read as :func:`parse_args` would read it but
    without argparse; None for any other command line, which parse_args reads.

    Only the plainest lines are read here: no option (no word begins with
    ``-``) and none set from the environment, a COMMAND of the table whose
    words are each one parameter, taken as text (DELTA and the lists of
    ``mget`` and ``mset`` are left to argparse), and as many words as the
    COMMAND takes. So a line read here is one that argparse accepts, with the
    same result, and every error is argparse's.
    """
    if (len(argv) < 2 or any(word.startswith("-") for word in argv)
            or any(variable in os.environ for variable, _ in _FROM_ENV.values())):
        return None
    node, command, *words = argv
    op = OPS.get(command.lower())
    if op is None or not op.cli:
        return None
    args = SimpleNamespace(**{dest: default for dest, (_, default) in _FROM_ENV.items()}, json=False, pipe=False,
                           node=node, command=op.name)
    positionals = [param for param in op.params if param.cli and not param.flag]
    if len(words) > len(positionals):
        return None
    for index, param in enumerate(positionals):
        if param.kind in (Kind.KEYS, Kind.PAIRS):
            return None
        if index < len(words):
            if param.kind in _TYPES:
                return None
            setattr(args, param.name, words[index])
        elif param.stdin or param.default is not None:
            setattr(args, param.name, param.default)
        else:
            return None  # a required word is missing: argparse says so
    for param in op.params:
        if param.cli and param.flag:
            setattr(args, param.name, param.default)
    for option in op.options:
        setattr(args, option.name, None if option.kind == "ttl" else False)
    return args


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse a ``memlookup`` command line; exits 2 with a message on bad usage.

    ``--nodes`` (or ``MEMLOOKUP_NODES``) stands in for NODE when the first
    positional word is a COMMAND, or, with ``--pipe``, when there is none.
    """
    top = _top_level()
    words = list(argv)
    positionals, seen = _scan(top, words)
    nodes = seen.get("nodes") or top.get_default("nodes")
    if nodes and positionals and words[positionals[0]].lower() in COMMANDS:
        words.insert(positionals[0], nodes)
        positionals = [positionals[0], positionals[0] + 1]
    elif nodes and not positionals and seen.get("pipe"):
        words.append(nodes)
    if len(positionals) < 2 or seen.get("help"):
        return build_parser().parse_args(words)
    command = words[positionals[1]].lower()
    if command not in COMMANDS:
        first = words[positionals[0]]
        if first.lower() in COMMANDS:
            _usage_error(f"no NODE before the COMMAND {first!r}: memlookup NODE {first} ..., or give the nodes "
                         "with --nodes or MEMLOOKUP_NODES")
        _usage_error(f"unknown command {words[positionals[1]][:40]!r}{suggestion(command)}")
    words[positionals[1]] = command
    _add_commands(top, command)
    return top.parse_args(words)


def call_arguments(op: Op, args: Args, read_value: Callable[[bool], str]) -> dict[str, Any]:
    """The keyword arguments of ``op``'s client method, from its parsed words.

    ``read_value(explicit)`` supplies a value read from standard input (for
    a ``stdin`` parameter left out, or given as ``-`` when ``explicit``).
    Arguments left to the client library's default are left out.

    Raises:
        UsageError: words that make no call (an ``mset`` key without a value).
    """
    kwargs: dict[str, Any] = {}
    for param in op.params:
        if not param.cli:
            continue
        value = getattr(args, param.name)
        if param.stdin and (value is None or value == "-"):
            value = read_value(value == "-")
        elif param.kind is Kind.PAIRS:
            if len(value) % 2:
                raise UsageError(f"{op.name} takes KEY VALUE pairs; the last key has no value")
            value = dict(zip(value[::2], value[1::2], strict=True))
        if value is not None:
            kwargs[param.name] = value
    for option in op.options:
        value = getattr(args, option.name)
        if value is not None and value is not False:
            kwargs[option.name] = value
    return kwargs
