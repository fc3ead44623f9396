"""The CLI parses with a parser of just the given command; it must agree with the whole one."""

import pytest

from client.cli import build_parser, parse_args

AGREE = [
    ["127.0.0.1", "get", "norway"],
    ["--timeout", "0.5", "127.0.0.1:7400", "set", "k", "v", "--ttl", "3", "--nx"],
    ["127.0.0.1", "--json", "mget", "a", "b"],
    ["127.0.0.1", "--retries", "0", "incr", "hits", "5"],
    ["127.0.0.1", "set", "--", "k", "-5"],
    ["127.0.0.1", "keys", "se*", "--count", "10"],
    ["127.0.0.1", "cas", "k", "old", "new"],
    ["127.0.0.1", "--pipe"],
    ["get", "get", "get"],  # a node named like a command
]


@pytest.mark.parametrize("argv", AGREE)
def test_the_lean_parse_equals_the_full_parse(argv):
    assert parse_args(argv) == build_parser().parse_args(argv)


@pytest.mark.parametrize("argv", [["127.0.0.1", "get"], ["127.0.0.1", "set", "k", "v", "--nx", "--xx"],
                                  ["127.0.0.1", "frobnicate"], ["127.0.0.1", "incr", "k", "x"]])
def test_bad_usage_gets_the_full_parsers_error(argv, capsys):
    with pytest.raises(SystemExit) as lean:
        parse_args(argv)
    lean_err = capsys.readouterr().err
    with pytest.raises(SystemExit) as full:
        build_parser().parse_args(argv)
    assert (lean.value.code, lean_err) == (full.value.code, capsys.readouterr().err)
    assert lean.value.code == 2 and "error:" in lean_err
