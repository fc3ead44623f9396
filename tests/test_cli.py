"""Every command through the real CLI in a subprocess, against a real server."""

from __future__ import annotations

import json

from tests.servers import run_cli


def test_set_get_del_exists(server):
    node = server.node
    assert run_cli(node, "set", "k", "v").returncode == 0
    assert run_cli(node, "exists", "k").returncode == 0
    deleted = run_cli(node, "del", "k")
    assert (deleted.returncode, deleted.stdout) == (0, "")
    again = run_cli(node, "del", "k")
    assert (again.returncode, again.stderr) == (1, "error: not found\n")
    assert run_cli(node, "exists", "k").returncode == 1


def test_values_with_spaces_newlines_and_non_ascii(server):
    for value in ["two words", "line1\nline2", "ÆØÅ — 東京"]:
        assert run_cli(server.node, "set", "k", value).returncode == 0
        assert run_cli(server.node, "get", "k").stdout == value + "\n"


def test_value_from_stdin_multiline_and_a_mebibyte(server):
    text = "first line\nsecond line\n"
    assert run_cli(server.node, "set", "poem", input=text).returncode == 0
    assert run_cli(server.node, "get", "poem").stdout == text + "\n"
    big = "x" * (1 << 20)
    assert run_cli(server.node, "set", "big", "-", input=big).returncode == 0
    assert run_cli(server.node, "--json", "get", "big").stdout == json.dumps({"key": "big", "value": big}) + "\n"


def test_stdin_that_is_not_utf8_is_refused(server):
    result = run_cli(server.node, "set", "k", input=b"\xff\xfe")
    assert result.returncode == 2 and "UTF-8" in result.stderr
    assert run_cli(server.node, "get", "k").returncode == 1


def test_values_beginning_with_a_dash_after_double_dash(server):
    assert run_cli(server.node, "set", "--", "-k", "-v").returncode == 0
    assert run_cli(server.node, "get", "--", "-k").stdout == "-v\n"
    assert run_cli(server.node, "set", "n", "--", "-5").returncode == 0
    assert run_cli(server.node, "incr", "n", "-3").stdout == "-8\n"


def test_json_distinguishes_missing_from_empty(server):
    run_cli(server.node, "set", "empty", "")
    empty = run_cli(server.node, "--json", "get", "empty")
    missing = run_cli(server.node, "get", "missing", "--json")
    assert (empty.returncode, json.loads(empty.stdout)) == (0, {"key": "empty", "value": ""})
    assert (missing.returncode, json.loads(missing.stdout)) == (1, {"key": "missing", "value": None})


def test_ttl_nx_xx(server):
    node = server.node
    assert run_cli(node, "set", "k", "v", "--ttl", "100").returncode == 0
    assert 99 < float(run_cli(node, "ttl", "k").stdout) <= 100
    refused = run_cli(node, "set", "k", "w", "--nx")
    assert refused.returncode == 1 and "not stored" in refused.stderr
    assert run_cli(node, "set", "other", "w", "--xx").returncode == 1
    assert run_cli(node, "set", "k", "w", "--xx").returncode == 0
    assert run_cli(node, "ttl", "k").stdout == "-1\n"
    assert run_cli(node, "ttl", "nothing").returncode == 1


def test_incr_on_a_non_integer_is_refused(server):
    run_cli(server.node, "set", "word", "abc")
    result = run_cli(server.node, "incr", "word")
    assert result.returncode == 3 and result.stderr.startswith("error: ") and "integer" in result.stderr
    assert run_cli(server.node, "get", "word").stdout == "abc\n"


def test_compare_and_set(server):
    node = server.node
    run_cli(node, "set", "k", "old")
    mismatch = run_cli(node, "cas", "k", "wrong", "new")
    assert mismatch.returncode == 1 and "not stored" in mismatch.stderr
    assert run_cli(node, "cas", "k", "old", "new").returncode == 0
    assert run_cli(node, "get", "k").stdout == "new\n"


def test_mset_mget_keys(server):
    node = server.node
    assert run_cli(node, "mset", "a", "1", "b", "two words", "c", "").returncode == 0
    assert run_cli(node, "mget", "a", "b", "zz", "c").stdout == "1\ntwo words\n(nil)\n\n"
    odd = run_cli(node, "mset", "a", "1", "b")
    assert odd.returncode == 2
    assert sorted(run_cli(node, "keys").stdout.split()) == ["a", "b", "c"]
    assert sorted(run_cli(node, "keys", "[ab]").stdout.split()) == ["a", "b"]
    assert json.loads(run_cli(node, "--json", "mget", "a", "zz").stdout) == {"a": "1", "zz": None}


def test_ping_and_stats(server):
    assert run_cli(server.node, "ping").stdout == "PONG\n"
    stats = run_cli(server.node, "stats")
    assert "keys: 0" in stats.stdout and "version:" in stats.stdout
    assert json.loads(run_cli(server.node, "--json", "stats").stdout)["protocol"] == 1


def test_bad_usage_exits_2():
    assert run_cli().returncode == 2
    assert run_cli("127.0.0.1", "frobnicate").returncode == 2
    bad_node = run_cli("host:99999", "get", "k")
    assert bad_node.returncode == 2 and "port" in bad_node.stderr


def test_help_lists_every_command():
    text = run_cli("--help").stdout
    for command in ["set", "get", "del", "exists", "mget", "mset", "keys", "ttl", "incr", "cas", "ping", "stats"]:
        assert command in text
