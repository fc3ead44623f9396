"""Every consumer of the table of operations (common/ops.py) has every row it should.

The CLI's part: a command for every ``cli`` row, calling a client method with
the row's names, and PROTOCOL.md's generated tables current. The client
library's part: every row a client sends is a method of every client, sending
that row's request, routed by a cluster client; and the generated method sets
(client/generate.py) are current.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from typing import Any, TypeVar

import msgpack
import pytest

from client import AsyncClient, AsyncClusterClient, AsyncPipeline, Client, ClusterClient, Pipeline, Stream, routing
from client.bulk import NOT_IN_PIPE
from client.cli_parser import COMMANDS as CLI_COMMANDS
from client.cli_parser import PROCEDURES, build_parser, command_parsers
from client.commands import COMMANDS, Commands
from client.commands_async import AsyncCommands
from client.commands_pipeline import PipelineCommands
from client.requests import NO_MISS, Command, Request
from common.ops import OPS_TABLE, Kind, Op, Route
from common.protocol import ProtocolError, Status, check_request, decode_reply
from server.eviction import NoEviction
from server.handler import Handler
from server.membership import MemberView
from server.memory import MemoryGuard
from server.store import Store
from tests.servers import ROOT

T = TypeVar("T")

SENT = [op for op in OPS_TABLE if op.route is not Route.NONE]

CLIENT_CLASSES = (Commands, AsyncCommands, PipelineCommands, Client, AsyncClient, ClusterClient, AsyncClusterClient,
                  Pipeline, AsyncPipeline, Stream)

#: A value of each kind, as a caller passes it and as it goes on the wire.
SAMPLES: dict[Kind, Any] = {
    Kind.KEY: "k",
    Kind.VALUE: "v",
    Kind.KEYS: ["a", "b"],
    Kind.PAIRS: {"a": "1"},
    Kind.INT: 5,
    Kind.PATTERN: "p*",
    Kind.CURSOR: 7,
    Kind.COUNT: 3,
}


class Recorder(Commands):
    """Commands whose requests are kept instead of sent."""

    def __init__(self) -> None:
        self.sent: list[Request[Any]] = []

    def _execute(self, command: Command[T], *args: Any, **options: Any) -> T:
        self.sent.append(command.request(args, options))
        return None  # type: ignore[return-value]  # nothing is sent, so there is no result


@pytest.mark.parametrize("client_class", CLIENT_CLASSES, ids=lambda c: c.__name__)
def test_every_row_a_client_sends_is_a_method_of_every_client(client_class: type) -> None:
    for op in SENT:
        assert callable(getattr(client_class, op.method, None)), f"{client_class.__name__} has no {op.method}"
    for op in OPS_TABLE:
        if op.route is Route.NONE:  # batch: how pipelines send, not a command
            assert not hasattr(client_class, op.method)


@pytest.mark.parametrize("op", SENT, ids=lambda op: op.name)
def test_each_method_sends_its_rows_request_with_the_rows_names(op: Op) -> None:
    """Called with the row's parameter and option names as keywords (as the CLI calls
    it), the method sends the row's op with the arguments in the row's order."""
    flags = [option for option in op.options if option.kind == "flag"][:1]  # nx and xx exclude each other
    options = {option.name: 2.5 for option in op.options if option.kind == "ttl"} | {o.name: True for o in flags}
    recorder = Recorder()
    getattr(recorder, op.method)(**{param.name: SAMPLES[param.kind] for param in op.params}, **options)
    [request] = recorder.sent
    assert request.command.op is op
    assert request.args == [SAMPLES[param.kind] for param in op.params]
    assert (request.options or {}) == options


def test_every_client_command_is_a_row_a_client_sends() -> None:
    assert sorted(COMMANDS) == sorted(op.name for op in SENT)
    for op in SENT:
        assert COMMANDS[op.name].op is op


@pytest.mark.parametrize("op", SENT, ids=lambda op: op.name)
def test_a_cluster_client_routes_every_row(op: Op) -> None:
    if op.route is Route.EVERY_NODE:
        assert op.name in routing.EVERY_NODE, f"{op.name}: how are the members' answers combined?"
    else:
        assert op.route in routing._PLANS
    if op.route is Route.READ:
        assert COMMANDS[op.name].missing is not NO_MISS, f"{op.name}: which reply means the key is not there?"


def test_the_generated_command_sets_are_current() -> None:
    result = subprocess.run([sys.executable, "-m", "client.generate", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- the CLI and the protocol reference ----------------------------------------

CLI_ROWS = [op for op in OPS_TABLE if op.cli]


def test_the_cli_has_a_command_for_every_cli_row_and_no_other() -> None:
    names = [op.name for op in CLI_ROWS]
    assert [name for name in CLI_COMMANDS if name not in PROCEDURES] == names
    assert set(command_parsers()) == {*names, *PROCEDURES} == {*names, "rebalance", "leave", "ready"}
    help_text = build_parser().format_help()
    for op in CLI_ROWS:
        assert op.summary in help_text


def _accepts_the_rows_words(method: object, op: Op) -> None:
    words = {param.name: None for param in op.params if param.cli}
    words |= {option.name: None for option in op.options}
    inspect.signature(method).bind(None, **words)  # type: ignore[arg-type]  # None: self


@pytest.mark.parametrize("op", [op for op in CLI_ROWS if op.name != "keys"], ids=lambda op: op.name)
def test_the_cli_calls_a_method_every_client_has_with_the_rows_names(op: Op) -> None:
    # The CLI calls getattr(table, op.method)(**words) on a Client or a ClusterClient,
    # and --pipe on a stream; keys walks every page with .keys(pattern=, count=).
    for client_class in (Client, ClusterClient):
        _accepts_the_rows_words(getattr(client_class, op.method), op)
    if op.name not in NOT_IN_PIPE:
        _accepts_the_rows_words(getattr(Stream, op.method), op)


def test_keys_walks_the_pages_with_the_rows_names() -> None:
    keys = next(op for op in CLI_ROWS if op.name == "keys")
    for client_class in (Client, ClusterClient):
        inspect.signature(client_class.keys).bind(None, **{p.name: None for p in keys.params if p.cli})


def test_protocol_md_operation_tables_are_current() -> None:
    result = subprocess.run([sys.executable, "docs/ops_reference.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- the server's consumers: decoder, handler, memory guard ------------------------

#: A valid argument of each kind (a new Kind without one here fails these tests), for a table
#: holding "k" = "1": every write among them makes the table larger, but a delete.
STORED_SAMPLES: dict[Kind, object] = {
    Kind.KEY: "k", Kind.VALUE: "a longer value", Kind.KEYS: ["k", "other"], Kind.PAIRS: {"k": "1", "other": "2"},
    Kind.INT: 41, Kind.PATTERN: "*", Kind.CURSOR: 0, Kind.COUNT: 10, Kind.REQUESTS: [["ping"]],
    Kind.ENTRIES: {"other": {"address": "127.0.0.1:7401", "state": "joining", "version": [1, 0, "other"]}},
    Kind.RECORDS: [["k", "a longer value", [1, 0, "n"], None], ["other", "2", [1, 0, "n"], None]],
}
#: Where a parameter needs another value than its kind's sample: a cas finds what it expects.
NAMED_SAMPLES: dict[str, object] = {"expected": "1"}

#: A valid value, and one its check refuses, of each option kind.
OPTION_SAMPLES: dict[str, tuple[object, object]] = {"ttl": (60, -1), "flag": (False, "yes")}


def _request(op: Op, **options: object) -> list[object]:
    args = [NAMED_SAMPLES.get(param.name, STORED_SAMPLES[param.kind]) for param in op.params]
    return [op.name, *args, *([options] if options else [])]


def _answer(handler: Handler, request: list[object]) -> tuple[int, object]:
    return decode_reply(handler.handle(msgpack.packb(request)))


def _member_of_a_kept_membership() -> MemberView:
    """The view of a node started with --join (``leave`` is refused by a cluster of one)."""
    view = MemberView("n1", 2, True, None)
    view.listening_at("127.0.0.1:7400")
    return view


@pytest.mark.parametrize("op", OPS_TABLE, ids=lambda op: op.name)
def test_the_handler_answers_every_row_with_a_function_of_its_own(op: Op) -> None:
    assert callable(getattr(Handler, f"op_{op.name}", None)), f"server/handler.py has no op_{op.name}"
    handler = Handler(Store(), members=_member_of_a_kept_membership())
    handler.store.set("k", "1")
    status, payload = _answer(handler, _request(op))
    assert status == Status.OK, payload
    assert handler.op_counts[op.name] == 1


@pytest.mark.parametrize("op", OPS_TABLE, ids=lambda op: op.name)
def test_the_decoder_takes_each_rows_arity_and_option_names(op: Op) -> None:
    request = _request(op)
    assert check_request(request) == (op.name, request[1:], {})
    for wrong in (request[:-1], [*request, "extra"]) if op.params else ([*request, "extra"],):
        with pytest.raises(ProtocolError) as refused:
            check_request(wrong)
        assert refused.value.status == Status.WRONG_ARITY
    for option in op.options:
        assert check_request(_request(op, **{option.name: OPTION_SAMPLES[option.kind][0]}))[2]
    others = {option.name for row in OPS_TABLE for option in row.options} - op.allowed_options
    for name in others | {"colour"}:
        with pytest.raises(ProtocolError, match=f"{op.name} has no option '{name}'"):
            check_request(_request(op, **{name: None}))


@pytest.mark.parametrize("op", [op for op in OPS_TABLE if op.options], ids=lambda op: op.name)
def test_each_option_is_checked_by_its_kind_and_a_refused_one_changes_nothing(op: Op) -> None:
    for option in op.options:
        handler = Handler(Store())
        handler.store.set("k", "1")
        status, message = _answer(handler, _request(op, **{option.name: OPTION_SAMPLES[option.kind][1]}))
        assert status == Status.BAD_REQUEST and option.name in str(message)
        assert sorted(handler.store.items()) == [("k", "1", None)]
        assert _answer(handler, _request(op, **{option.name: OPTION_SAMPLES[option.kind][0]}))[0] == Status.OK
        if option.excludes:
            both = {option.name: True, option.excludes: True}
            status, message = _answer(Handler(Store()), _request(op, **both))
            assert (status, "exclude each other" in str(message)) == (Status.BAD_REQUEST, True)


@pytest.mark.parametrize("op", [op for op in OPS_TABLE if op.writes], ids=lambda op: op.name)
def test_the_memory_guard_refuses_at_its_limit_every_write_that_stores_something(op: Op) -> None:
    # What the write adds to the table, uncapped...
    plain = Handler(Store())
    plain.store.set("k", "1")
    before = plain.store.memory_bytes
    assert _answer(plain, _request(op))[0] == Status.OK
    grows = plain.store.memory_bytes > before
    # ...and the same write on a table at its limit (nothing more fits, nothing may be evicted).
    store = Store()
    store.set("k", "1")
    guard = MemoryGuard(store, 10_001 + store.memory_bytes, NoEviction, baseline_bytes=10_000)
    capped = Handler(store, memory=guard)
    status, payload = _answer(capped, _request(op))
    if grows:
        assert status == Status.OUT_OF_MEMORY, f"{op.name} grew the table but the guard let it through"
        assert sorted(store.items()) == [("k", "1", None)]
    else:
        assert status == Status.OK, payload  # a delete frees memory: never refused
        assert not any(param.stored for param in op.params)
