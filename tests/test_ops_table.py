"""Every consumer of the table of operations (common/ops.py) has every row it should."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from client import Client, ClusterClient
from client.bulk import NOT_IN_PIPE
from client.cli_parser import COMMANDS, build_parser, command_parsers
from client.pipeline import Pipeline
from common.ops import OPS_TABLE, Op
from tests.servers import ROOT

CLI_ROWS = [op for op in OPS_TABLE if op.cli]


def test_the_cli_has_a_command_for_every_cli_row_and_no_other() -> None:
    names = [op.name for op in CLI_ROWS]
    assert [name for name in COMMANDS if name != "rebalance"] == names
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
    # and --pipe on a pipeline; keys walks every page with .keys(pattern=, count=).
    for client_class in (Client, ClusterClient):
        _accepts_the_rows_words(getattr(client_class, op.method), op)
    if op.name not in NOT_IN_PIPE:
        _accepts_the_rows_words(getattr(Pipeline, op.method), op)


def test_keys_walks_the_pages_with_the_rows_names() -> None:
    keys = next(op for op in CLI_ROWS if op.name == "keys")
    for client_class in (Client, ClusterClient):
        inspect.signature(client_class.keys).bind(None, **{p.name: None for p in keys.params if p.cli})


def test_protocol_md_operation_tables_are_current() -> None:
    result = subprocess.run([sys.executable, "docs/ops_reference.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
