"""The CLI parses with a parser of just the given command; it must agree with the whole one.

And it finds the COMMAND from the parser's own options, so an option's value
is never taken for NODE or COMMAND (``MEMLOOKUP_NODES=a,b memlookup
--server-key s.key get k`` once exited 2 with "invalid choice: 'k'").
"""

from __future__ import annotations

import argparse

import pytest

from client.cli_parser import COMMANDS, build_parser, parse_args, plain_args

AGREE = [
    ["127.0.0.1", "get", "norway"],
    ["--timeout", "0.5", "127.0.0.1:7400", "set", "k", "v", "--ttl", "3", "--nx"],
    ["127.0.0.1", "--json", "mget", "a", "b"],
    ["127.0.0.1", "--retries", "0", "incr", "hits", "5"],
    ["127.0.0.1", "set", "--", "k", "-5"],
    ["127.0.0.1", "keys", "se*", "--count", "10"],
    ["127.0.0.1", "cas", "k", "old", "new"],
    ["127.0.0.1", "--pipe"],
    ["--server-key", "s.key", "127.0.0.1", "get", "k"],
    ["--timeout=0.5", "127.0.0.1", "get", "k"],
    ["get", "get", "get"],  # a node named like a command
]


@pytest.mark.parametrize("argv", AGREE)
def test_the_lean_parse_equals_the_full_parse(argv: list[str]) -> None:
    assert parse_args(argv) == build_parser().parse_args(argv)


@pytest.mark.parametrize("argv", [["127.0.0.1", "get"], ["127.0.0.1", "set", "k", "v", "--nx", "--xx"],
                                  ["127.0.0.1", "incr", "k", "x"], ["127.0.0.1", "keys", "--count", "0"],
                                  ["--timeout", "-1", "127.0.0.1", "get", "k"]])
def test_bad_usage_gets_the_full_parsers_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as lean:
        parse_args(argv)
    lean_err = capsys.readouterr().err
    with pytest.raises(SystemExit) as full:
        build_parser().parse_args(argv)
    assert (lean.value.code, lean_err) == (full.value.code, capsys.readouterr().err)
    assert lean.value.code == 2 and "error:" in lean_err


@pytest.mark.parametrize("before", [["--server-key", "s.key"], ["--client-key", "c.key_secret"],
                                    ["--timeout", "2"], ["--json"], ["--replicas", "1"]])
def test_nodes_from_the_environment_stand_in_for_node_whatever_options_come_first(
        before: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMLOOKUP_NODES", "a,b")
    args = parse_args([*before, "get", "k"])
    assert (args.node, args.command, args.key) == ("a,b", "get", "k")


def test_nodes_flag_stands_in_for_node_and_for_pipe() -> None:
    args = parse_args(["--nodes", "a,b", "--server-key", "s.key", "GET", "k"])
    assert (args.node, args.command, args.key, args.server_key) == ("a,b", "get", "k", "s.key")
    assert parse_args(["--nodes", "a", "--pipe"]).node == "a"


def test_a_command_is_case_insensitive_and_its_words_are_not() -> None:
    assert vars(parse_args(["127.0.0.1", "SET", "Key", "VALUE"])) == vars(
        build_parser().parse_args(["127.0.0.1", "set", "Key", "VALUE"]))


def test_options_are_never_abbreviated() -> None:
    # The COMMAND is found by the options' full names; an abbreviation would hide it.
    with pytest.raises(SystemExit):
        parse_args(["--time", "2", "127.0.0.1", "get", "k"])


def test_every_parameter_and_option_of_a_row_reaches_the_namespace() -> None:
    args = parse_args(["127.0.0.1", "set", "k", "v", "--ttl", "2.5", "--xx"])
    assert isinstance(args, argparse.Namespace)
    assert (args.key, args.value, args.ttl_s, args.nx, args.xx) == ("k", "v", 2.5, False, True)
    assert parse_args(["127.0.0.1", "set", "k"]).value is None  # read from standard input
    assert parse_args(["127.0.0.1", "incr", "k"]).delta == 1
    keys = parse_args(["127.0.0.1", "keys"])
    assert (keys.pattern, keys.count) == ("*", None)


def _every_plain_line() -> list[list[str]]:
    """Every COMMAND (in upper case too) with 0 to 4 plain words, some of them looking like other things."""
    words = ["norway", "GET", "", "a b", "7", "*"]
    return [["127.0.0.1:7400", command, *words[:count]]
            for command in (*COMMANDS, "GET", "Set", "bogus") for count in range(5)]


def test_a_plain_line_read_without_argparse_is_read_as_argparse_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("MEMLOOKUP_TIMEOUT", "MEMLOOKUP_RETRIES", "MEMLOOKUP_SERVER_KEY", "MEMLOOKUP_CLIENT_KEY",
                     "MEMLOOKUP_NODES", "MEMLOOKUP_REPLICAS"):
        monkeypatch.delenv(variable, raising=False)
    read = set()
    for argv in _every_plain_line():
        plain = plain_args(argv)
        if plain is not None:
            assert vars(plain) == vars(parse_args(argv)), argv
            read.add((argv[1], len(argv) - 2))
    assert read == {("ping", 0), ("get", 1), ("GET", 1), ("set", 1), ("set", 2), ("Set", 1), ("Set", 2),
                    ("del", 1), ("exists", 1), ("keys", 0), ("keys", 1), ("ttl", 1), ("incr", 1), ("cas", 3),
                    ("stats", 0)}


@pytest.mark.parametrize("argv", [["127.0.0.1", "get", "k", "--json"], ["127.0.0.1", "get", "-"],
                                  ["--timeout", "2", "127.0.0.1", "get", "k"], ["127.0.0.1", "get"],
                                  ["127.0.0.1", "get", "k", "extra"], ["127.0.0.1", "incr", "k", "5"],
                                  ["127.0.0.1", "mget", "a", "b"], ["127.0.0.1", "rebalance"], ["get", "k"],
                                  ["127.0.0.1", "batch", "x"], ["127.0.0.1"], []])
def test_a_line_with_an_option_a_conversion_a_list_or_the_wrong_words_is_left_to_argparse(argv: list[str]) -> None:
    assert plain_args(argv) is None


@pytest.mark.parametrize("variable", ["MEMLOOKUP_TIMEOUT", "MEMLOOKUP_NODES", "MEMLOOKUP_SERVER_KEY"])
def test_an_option_from_the_environment_leaves_the_line_to_argparse(variable: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, "2")
    assert plain_args(["127.0.0.1", "get", "k"]) is None
    assert parse_args(["127.0.0.1", "get", "k"]).key == "k"
