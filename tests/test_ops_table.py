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

import pytest

from client import AsyncClient, AsyncClusterClient, AsyncPipeline, Client, ClusterClient, Pipeline, Stream, routing
from client.bulk import NOT_IN_PIPE
from client.cli_parser import COMMANDS as CLI_COMMANDS
from client.cli_parser import build_parser, command_parsers
from client.commands import COMMANDS, Commands
from client.commands_async import AsyncCommands
from client.commands_pipeline import PipelineCommands
from client.requests import NO_MISS, Command, Request
from common.ops import OPS_TABLE, Kind, Op, Route
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
    assert [name for name in CLI_COMMANDS if name != "rebalance"] == names
    assert set(command_parsers()) == {*names, "rebalance"}
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
