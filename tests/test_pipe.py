"""``memlookup NODE --pipe < FILE`` through the real CLI against a real server."""

from client import Client
from client.bulk import plain_set_lines
from tests.servers import run_cli, run_cli_imports

FILE = """\
set plain 1
SET spaced "hello world"

Set 'quoted' 'it''s'
set noval
bogus x y
incr plain 5
incr spaced
set broken "no closing quote
set ttl v --ttl 100
set dup first
set dup second
mset m1 a m2 "b c"
del gone
"""


def test_pipe_runs_every_line_counts_errors_by_line_and_values_are_readable(server):
    result = run_cli(server.node, "--pipe", input=FILE)
    assert result.returncode == 3, result.stderr  # some lines were refused
    lines = result.stderr.splitlines()
    assert lines[:4] == [
        "line 5: set needs a VALUE with --pipe (standard input is the command stream)",
        "line 6: unknown command 'bogus'",
        "line 8: value of 'spaced' is not an integer",
        "line 9: cannot split the line: No closing quotation",
    ]
    assert lines[-1] == "sent: 9, errors: 4, lines: 13"
    with Client(server.node) as table:
        assert table.get("plain") == "6"
        assert table.get("spaced") == "hello world"
        assert table.get("quoted") == "its"
        assert table.get("dup") == "second"
        assert table.mget(["m1", "m2"]) == ["a", "b c"]
        assert 0 < table.ttl("ttl") <= 100
        assert table.get("noval") is None and table.get("bogus") is None


def test_pipe_of_many_plain_sets_is_batched_and_complete(server):
    pairs = 5000
    text = "".join(f"set key:{i:06d} value-{i}\n" for i in range(pairs))
    result = run_cli(server.node, "--pipe", input=text)
    assert (result.returncode, result.stderr) == (0, f"sent: {pairs}, errors: 0, lines: {pairs}\n")
    with Client(server.node) as table:
        assert table.stats()["keys"] == pairs
        assert table.get("key:004999") == "value-4999"
        # batched: far fewer requests than lines
        assert table.stats()["ops"].get("mset", 0) < pairs // 100


def test_pipe_reports_lines_over_the_servers_limits_without_losing_the_batch(start_server):
    server = start_server("--max-key-bytes", "4")
    result = run_cli(server.node, "--pipe", input="set a 1\nset toolong 2\nset c 3\n")
    assert result.returncode == 3
    assert result.stderr.splitlines() == ["line 2: key longer than 4 bytes", "sent: 2, errors: 1, lines: 3"]
    with Client(server.node) as table:
        assert table.mget(["a", "c"]) == ["1", "3"]
        assert table.stats()["keys"] == 2


def test_pipe_and_a_command_together_is_a_usage_error(server):
    result = run_cli(server.node, "--pipe", "get", "x", input="")
    assert result.returncode == 2
    assert "give no COMMAND" in result.stderr
    missing = run_cli(server.node)
    assert missing.returncode == 2 and "a COMMAND is required" in missing.stderr


def test_pipe_with_invalid_utf8_counts_the_line(server):
    result = run_cli(server.node, "--pipe", input=b"set a \xff\xfe\nset b ok\n")
    assert result.returncode == 3
    assert result.stderr.splitlines() == ["line 1: not UTF-8 text (byte 6)", "sent: 1, errors: 1, lines: 2"]


PLAIN_LINES = "set a one\nincr n 5\ndel gone\nmset m1 p m2 q\nset t v --ttl 100\n"
#: The same commands, every word quoted or escaped, as a shell would take them.
QUOTED_LINES = "set 'a' \"one\"\nincr \"n\" '5'\ndel g\\one\nmset 'm1' p \"m2\" 'q'\nset \"t\" 'v' --ttl '100'\n"


def test_pipe_splits_plain_lines_without_shlex_and_quoted_lines_give_the_same_result(start_server):
    outcomes = []
    for text in (PLAIN_LINES, QUOTED_LINES):
        server = start_server()
        with Client(server.node) as table:
            table.set("gone", "x")
        result, imported = run_cli_imports(server.node, "--pipe", input=text)
        with Client(server.node) as table:
            values = table.mget(["a", "n", "gone", "m1", "m2", "t"])
            outcomes.append((result.returncode, result.stderr, values, table.ttl("t") > 0, table.stats()["keys"]))
        assert ("shlex" in imported) == (text is QUOTED_LINES)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0] == (0, "sent: 5, errors: 0, lines: 5\n", ["one", "5", None, "p", "q", "v"], True, 5)


def test_pipe_splits_words_only_at_shlex_blanks_whatever_the_line_looks_like(server):
    # Space, tab, CR and LF separate words, as shlex splits a quoted line; a
    # no-break space, a vertical tab or a form feed is part of its word.
    text = "set nb a\u00a0b\nset vt\x0bx y\nset ff\x0cx\tz\r\nset 'q' \"c\u00a0d\"\n"
    result = run_cli(server.node, "--pipe", input=text)
    assert (result.returncode, result.stderr) == (0, "sent: 4, errors: 0, lines: 4\n")
    with Client(server.node) as table:
        assert table.mget(["nb", "vt\x0bx", "ff\x0cx", "q"]) == ["a\u00a0b", "y", "z", "c\u00a0d"]
        assert table.stats()["keys"] == 4


def test_pipe_reads_blocks_of_plain_sets_as_it_reads_lines_one_by_one(start_server):
    # Blocks of plain sets are read in one go, other blocks line by line; a
    # line longer than a read (64 KiB) and a last line without a newline too.
    server = start_server("--max-batch-keys", "3", "--max-key-bytes", "8")
    big = "v" * 100_000
    text = (f"set a 1\nSeT b 2\n\tset c\t3 \r\nset a 4\nset d 5\nset big {big}\n"
            "set toolongkey 7\nxset e 6\nset f 8")
    result = run_cli(server.node, "--pipe", input=text)
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        "line 7: key longer than 8 bytes",
        "line 8: unknown command 'xset' (did you mean 'set'?)",
        "sent: 7, errors: 2, lines: 9",
    ]
    with Client(server.node) as table:
        assert [table.get(key) for key in ("a", "b", "c", "d", "big", "f", "e")] == ["4", "2", "3", "5", big, "8", None]
        assert table.stats()["keys"] == 6


def test_a_plain_set_line_is_a_whole_line_with_no_quote_option_or_word_over_the_limits():
    plain = plain_set_lines(max_key_bytes=4, max_value_bytes=6)
    lines = ["set k v\n", " SET\tk\tv \r\n", "xset k v\n", "set -k v\n", "set k -v\n", "set 'k' v\n",
             "set k\\ v\n", "set k v extra\n", "set k\n", "set kkkk vvvvvv\n", "set kkkkk v\n", "set k vvvvvvv\n"]
    assert [plain.findall(line) for line in lines] == [
        [("k", "v")], [("k", "v")], [], [], [], [], [], [], [], [("kkkk", "vvvvvv")], [], []]
