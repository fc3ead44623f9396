"""Every operation through the library against a real server, through Client and AsyncClient alike.

The ``client`` and ``make_client`` fixtures (tests/conftest.py) run each test
once with a ``Client`` and once with an ``AsyncClient`` whose calls are awaited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from client import Client, InvalidRequestError, NotAnIntegerError
from tests.servers import ServerProcess


def test_set_get_missing_and_empty(client: Any) -> None:
    assert client.get("norway") is None
    assert client.set("norway", "oslo") is True
    assert client.get("norway") == "oslo"
    client.set("empty", "")
    assert client.get("empty") == ""
    assert client.exists("empty") and not client.exists("nothing")


def test_mapping_sugar(server: ServerProcess) -> None:
    with Client(server.node, timeout_s=2.0) as client:  # the blocking clients' alone: `x[k] = v` cannot be awaited
        client["a"] = "1"
        assert client["a"] == "1" and "a" in client
        del client["a"]
        with pytest.raises(KeyError):
            client["a"]
        with pytest.raises(KeyError):
            del client["a"]


@pytest.mark.parametrize("value", ["with spaces", "line one\nline two\n", "blåbærsyltetøy 東京 🙂", "x" * (1 << 20)])
def test_values_round_trip(client: Any, value: str) -> None:
    client.set("k", value)
    assert client.get("k") == value


def test_non_ascii_keys(client: Any) -> None:
    client.set("smørbrød", "ja")
    assert client.get("smørbrød") == "ja"
    assert list(client.keys("smør*")) == ["smørbrød"]


def test_nx_and_xx(client: Any) -> None:
    assert client.set("k", "1", xx=True) is False
    assert client.get("k") is None
    assert client.set("k", "1", nx=True) is True
    assert client.set("k", "2", nx=True) is False
    assert client.set("k", "3", xx=True) is True
    assert client.get("k") == "3"


def test_ttl_expiry(client: Any) -> None:
    client.set("short", "v", ttl_s=0.3)
    client.set("long", "v", ttl_s=100)
    client.set("forever", "v")
    assert 0 < client.ttl("short") <= 0.3
    assert 99 < client.ttl("long") <= 100
    assert client.ttl("forever") == -1
    assert client.ttl("missing") == -2
    time.sleep(0.4)
    assert client.get("short") is None
    assert client.ttl("short") == -2
    client.set("long", "again")  # a set without ttl removes the expiry
    assert client.ttl("long") == -1


def test_expired_keys_nobody_reads_are_swept(client: Any) -> None:
    client.mset({f"k{i}": "v" for i in range(500)}, ttl_s=0.2)
    assert client.stats()["keys"] == 500
    deadline = time.monotonic() + 5
    while client.stats()["keys"] and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = client.stats()
    assert stats["keys"] == 0 and stats["expired_keys"] == 500


def test_delete(client: Any) -> None:
    client.set("k", "v")
    assert client.delete("k") is True
    assert client.delete("k") is False


def test_incr(client: Any) -> None:
    assert client.incr("n") == 1
    assert client.incr("n", 10) == 11
    assert client.incr("n", -20) == -9
    assert client.get("n") == "-9"
    client.set("word", "abc")
    with pytest.raises(NotAnIntegerError):
        client.incr("word")
    assert client.get("word") == "abc"


def test_incr_keeps_the_ttl(client: Any) -> None:
    client.set("n", "1", ttl_s=100)
    client.incr("n")
    assert client.ttl("n") > 99


def test_compare_and_set(client: Any) -> None:
    assert client.cas("k", "old", "new") is False  # missing
    client.set("k", "old")
    assert client.cas("k", "other", "new") is False
    assert client.get("k") == "old"
    assert client.cas("k", "old", "new") is True
    assert client.get("k") == "new"


def test_mget_mset(client: Any) -> None:
    client.mset({"a": "1", "b": "", "c": "3"})
    assert client.mget(["a", "b", "missing", "c"]) == ["1", "", None, "3"]
    assert client.mget([]) == []


def test_keys_scans_in_pages(client: Any) -> None:
    client.mset({f"user:{i}": "x" for i in range(3000)})
    client.mset({f"item:{i}": "x" for i in range(100)})
    users = list(client.keys("user:*", count=50))
    assert sorted(users) == sorted(f"user:{i}" for i in range(3000))
    assert len(list(client.keys())) == 3100
    assert list(client.keys("user:1?")) and all(len(k) == 7 for k in client.keys("user:1?"))


def test_scan_cursor_pages_are_bounded(client: Any) -> None:
    client.mset({f"k{i}": "x" for i in range(5000)})
    cursor, page = client.scan(0, "*", 10)
    assert cursor != 0 and len(page) < 100


def test_ping_and_stats(client: Any) -> None:
    assert client.ping() is True
    client.set("k", "v")
    client.get("k")
    stats = client.stats()
    assert stats["keys"] == 1
    assert stats["ops"]["set"] == 1 and stats["ops"]["get"] == 1
    assert stats["version"] and stats["uptime_s"] >= 0 and stats["memory_bytes"] > 0
    assert stats["limits"]["max_value_bytes"] == 16 * 1024 * 1024


def test_caller_mistakes_are_invalid_request_errors(client: Any) -> None:
    with pytest.raises(InvalidRequestError):
        client.set("k", 5)
    with pytest.raises(InvalidRequestError):
        client.set("k", "v", ttl_s=-1)
    with pytest.raises(InvalidRequestError) as too_long:
        client.set("k" * 2000, "v")
    assert too_long.value.code == 4
    assert client.get("k") is None


@pytest.mark.parametrize("call, message", [
    (lambda t: t.set("k", "v", nx=True, xx=True), "nx and xx exclude each other"),
    (lambda t: t.mget("k"), "keys must be a list of str, not one str"),
    (lambda t: t.mget(["a", 1]), "each key must be a str, not int"),
    (lambda t: t.mset({"a": None}), "keys and values must be str, not NoneType"),
    (lambda t: t.incr("n", 1.5), "delta must be an int, not float"),
    (lambda t: t.scan(0, "*", 0), "count must be at least 1"),
    (lambda t: t.cas("k", "v", "w", ttl_s=float("inf")), "ttl_s must be a positive number"),
])
def test_mistakes_the_client_sees_are_refused_before_sending(
        client: Any, call: Callable[[Any], object], message: str,
) -> None:
    with pytest.raises(InvalidRequestError, match=message) as refused:
        call(client)
    assert refused.value.code is None  # caught here: the server never saw it
    stats = client.stats()
    assert stats["ops"] == {"stats": 1} and stats["errors"] == {}


def test_limits_are_the_servers(start_server: Callable[..., ServerProcess], make_client: Callable[..., Any]) -> None:
    server = start_server("--max-value-bytes", "10")
    with make_client(server.node, timeout_s=2) as table:
        table.set("k", "x" * 10)
        with pytest.raises(InvalidRequestError, match=r"longer than 10 bytes|size limit"):
            table.set("k", "x" * 11)
        assert table.get("k") == "x" * 10


@pytest.mark.parametrize("options", [{"timeout_s": 0}, {"timeout_s": -1.0}, {"retries": -1}])
def test_a_bad_timeout_or_retry_count_is_refused_when_the_client_is_made(
        make_client: Callable[..., Any], options: dict[str, float],
) -> None:
    with pytest.raises(ValueError, match=r"timeout_s|retries"):
        make_client("127.0.0.1:1", **options)
