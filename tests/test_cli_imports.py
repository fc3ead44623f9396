"""A one-shot command imports what its own path needs, and no more (``python -X importtime``).

Start-up is most of what ``memlookup NODE get KEY`` costs (docs/BENCHMARKS.md,
``bench/cli_startup.py``); these modules were each measured on that path and
taken off it. Timing is the benchmark's business; this checks the cause.
"""

from __future__ import annotations

import pytest

from client import Client
from tests.servers import run_cli_imports

#: argparse (and the gettext and locale it loads), only when a line has options;
#: shlex for --pipe's quoted lines; the cluster, asyncio and bulk-load code, and
#: tqdm, json and difflib, for the commands and outputs that use them.
NOT_FOR_A_PLAIN_COMMAND = {"argparse", "gettext", "locale", "shlex", "asyncio", "zmq.asyncio", "client.cluster",
                           "client.async_client", "client.bulk", "client.pipeline", "concurrent.futures",
                           "tqdm", "difflib", "dataclasses"}


@pytest.mark.parametrize(("words", "code", "stdout", "stderr"), [
    (["get", "norway"], 0, "oslo\n", ""),
    (["GET", "sweden"], 1, "", "error: not found\n"),
    (["set", "denmark", "copenhagen"], 0, "", ""),
    (["del", "norway"], 0, "", ""),
    (["ttl", "norway"], 0, "-1\n", ""),
])
def test_a_plain_command_imports_neither_argparse_nor_what_other_paths_need(server, words, code, stdout, stderr):
    with Client(server.node) as table:
        table.set("norway", "oslo")
    result, imported = run_cli_imports(server.node, *words)
    assert (result.returncode, result.stdout, result.stderr) == (code, stdout, stderr)
    assert imported & NOT_FOR_A_PLAIN_COMMAND == set()
    assert "client.cli" in imported  # the import lines were read


def test_a_command_with_an_option_is_parsed_by_argparse_with_the_same_result(server):
    with Client(server.node) as table:
        table.set("norway", "oslo")
    result, imported = run_cli_imports(server.node, "get", "norway", "--timeout", "2")
    assert (result.returncode, result.stdout) == (0, "oslo\n")
    assert "argparse" in imported
