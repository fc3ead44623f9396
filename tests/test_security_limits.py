"""Every limit is enforced by a real server, and documented with its default."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from client import Client
from common.errors import InvalidRequestError
from common.limits import Limits
from common.protocol import Status
from tests.servers import run_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tight(start_server):
    server = start_server("--max-key-bytes", "8", "--max-value-bytes", "16", "--max-batch-keys", "3",
                          "--max-scan-count", "2", "--max-pattern-bytes", "4")
    with Client(server.node, timeout_s=5) as table:
        yield table


def _too_large(call: Callable[[], object]) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        call()
    assert caught.value.code == Status.TOO_LARGE


def test_key_bytes_are_counted_in_utf8(tight):
    assert tight.set("k" * 8, "v")
    _too_large(lambda: tight.set("k" * 9, "v"))
    _too_large(lambda: tight.get("é" * 5))  # 5 characters, 10 bytes
    assert tight.stats()["keys"] == 1


def test_value_bytes(tight):
    assert tight.set("k", "v" * 16)
    _too_large(lambda: tight.set("k", "v" * 17))
    _too_large(lambda: tight.cas("k", "v" * 16, "€" * 6))  # 18 bytes
    assert tight.get("k") == "v" * 16


def test_batch_keys(tight):
    tight.mset({"a": "1", "b": "2", "c": "3"})
    assert tight.mget(["a", "b", "c"]) == ["1", "2", "3"]
    _too_large(lambda: tight.mget(["a", "b", "c", "d"]))
    _too_large(lambda: tight.mset({"w": "1", "x": "2", "y": "3", "z": "4"}))
    assert tight.get("w") is None


def test_scan_count_caps_a_page_and_pattern_bytes(tight):
    tight.mset({"a": "1", "b": "2", "c": "3"})
    tight.mset({"d": "1", "e": "2", "f": "3"})
    cursor, page = tight.scan(0, "*", count=10_000)
    assert cursor != 0 and len(page) < 6  # capped at 2 examined keys, not 10,000
    assert sorted(tight.keys("*", count=10_000)) == ["a", "b", "c", "d", "e", "f"]
    _too_large(lambda: tight.scan(0, "abcde"))


def test_every_limit_is_documented_with_its_default():
    protocol = (ROOT / "docs" / "PROTOCOL.md").read_text()
    security = (ROOT / "SECURITY.md").read_text()
    for field in dataclasses.fields(Limits):
        flag = "--" + field.name.replace("_", "-")
        assert f"`{field.name}`" in protocol and flag in protocol, field.name
        assert flag in security, field.name
    for setting in ("--max-memory", "--eviction", "1000 each way", "--curve-secret-key", "--allow"):
        assert setting in security


def test_the_reply_limit_comes_from_its_environment_variable_and_refuses_large_replies(start_server):
    server = start_server(env={"MEMLOOKUP_MAX_REPLY_BYTES": "100000"})
    with Client(server.node, timeout_s=5) as table:
        assert table.stats()["limits"]["max_reply_bytes"] == 100_000
        table.set("v", "x" * 60_000)
        assert table.get("v") == "x" * 60_000
        _too_large(lambda: table.mget(["v", "v"]))


@pytest.mark.parametrize("args, message", [
    (["--max-reply-bytes", "4096"], "max-reply-bytes must be at least 8192"),
    (["--max-reply-bytes", "300000000"], "the output limits must grow"),
    (["--max-peer-output-bytes", "1000000000"], "the output limits must grow"),
])
def test_output_limits_that_cannot_work_are_a_usage_error(args, message):
    result = run_server(*args)
    assert result.returncode == 2 and message in result.stderr
