"""The command line next to redis-cli and etcdctl: the real CLI in a subprocess, against real servers."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from client.cli_parser import EXAMPLES
from common import __version__
from common.keys import create_key_pair
from tests.servers import ROOT, ServerProcess, run_cli


def test_a_misspelt_command_gets_a_suggestion(server: ServerProcess) -> None:
    result = run_cli(server.node, "gte", "k")
    assert result.returncode == 2
    assert result.stderr.endswith("memlookup: error: unknown command 'gte' (did you mean 'get'?)\n")
    nothing_close = run_cli(server.node, "frobnicate")
    assert nothing_close.returncode == 2
    assert nothing_close.stderr.endswith("memlookup: error: unknown command 'frobnicate'\n")
    no_node = run_cli("get", "k")
    assert no_node.returncode == 2
    assert no_node.stderr.endswith("memlookup: error: no NODE before the COMMAND 'get': memlookup NODE get ..., or "
                                   "give the nodes with --nodes or MEMLOOKUP_NODES\n")
    piped = run_cli(server.node, "--pipe", input="sett a 1\nset b 2\n")
    assert piped.stderr.splitlines() == ["line 1: unknown command 'sett' (did you mean 'set'?)",
                                         "sent: 1, errors: 1, lines: 2"]


def test_commands_are_case_insensitive_as_in_pipe(server: ServerProcess) -> None:
    assert run_cli(server.node, "SET", "Norway", "Oslo").returncode == 0
    found = run_cli(server.node, "Get", "Norway")
    assert (found.returncode, found.stdout) == (0, "Oslo\n")
    assert run_cli(server.node, "GET", "norway").returncode == 1  # keys keep their case


def test_version() -> None:
    result = run_cli("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"memlookup {__version__}\n", "")


def _with_closed_stdout(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with standard output a pipe whose reader is already gone (``| head -0``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "client", *args], cwd=ROOT, stdout=write_end,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=30, check=False)
    finally:
        os.close(write_end)


def test_a_closed_pipe_ends_quietly_as_a_unix_tool_does(server: ServerProcess) -> None:
    assert run_cli(server.node, "set", "k", "v").returncode == 0
    for args in (("get", "k"), ("keys",), ("stats",), ("--json", "mget", "k", "other")):
        result = _with_closed_stdout(server.node, *args)
        assert (result.returncode, result.stderr) == (141, b""), args


def _on_a_terminal(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with a terminal as standard input (nobody types on it)."""
    controller, terminal = pty.openpty()
    try:
        return subprocess.run([sys.executable, "-m", "client", *args], cwd=ROOT, stdin=terminal,
                              capture_output=True, timeout=30, check=False)
    finally:
        os.close(terminal)
        os.close(controller)


def test_set_without_a_value_on_a_terminal_refuses_with_a_hint(server: ServerProcess) -> None:
    result = _on_a_terminal(server.node, "set", "k")
    assert result.returncode == 2
    assert result.stderr.decode() == (
        "error: set needs a VALUE, and standard input is a terminal: give VALUE after the KEY, or send it on "
        "standard input (memlookup NODE set KEY < FILE); '-' reads the terminal up to Ctrl-D\n")
    assert run_cli(server.node, "exists", "k").returncode == 1
    assert _on_a_terminal(server.node, "set", "k", "typed").returncode == 0
    assert run_cli(server.node, "get", "k").stdout == "typed\n"


def test_help_shows_examples_and_exit_statuses() -> None:
    text = run_cli("--help").stdout
    assert "examples:" in text and "exit status:" in text
    for line, what in EXAMPLES:
        assert f"{line}  " in text and what in text


def test_nodes_from_the_environment_with_a_server_key_option_first(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    public, secret = create_key_pair(tmp_path, "server")
    nodes = ",".join(start_server("--curve-secret-key", str(secret)).node for _ in range(2))
    env = {"MEMLOOKUP_NODES": nodes}
    stored = run_cli("--server-key", str(public), "set", "k", "v", env=env)
    assert stored.returncode == 0, stored.stderr
    found = run_cli("--server-key", str(public), "get", "k", env=env)
    assert (found.returncode, found.stdout) == (0, "v\n"), found.stderr


def test_the_man_page_has_examples_environment_and_exit_status_and_no_repeated_blocks() -> None:
    page = (ROOT / "man" / "memlookup.1").read_text()  # current: test_server_process checks it
    sections = [line for line in page.splitlines() if line.startswith(".SH ")]
    for section in (".SH EXIT STATUS", ".SH ENVIRONMENT", ".SH EXAMPLES"):
        assert sections.count(section) == 1, sections
    for option in ("timeout", "retries", "json", "server\\-key", "client\\-key"):
        assert page.count(f".B \\-\\-{option}") + page.count(f"\\fB\\-\\-{option}") == 1, option
    assert ".B MEMLOOKUP_NODES" in page and ".B memlookup 127.0.0.1 set norway oslo" in page
