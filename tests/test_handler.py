"""The request handler alone: frames in, frames out, no socket."""

from __future__ import annotations

import msgpack
import pytest

from common.limits import Limits
from common.protocol import Status, decode_reply, encode_request
from server.handler import Handler
from server.store import Store


@pytest.fixture
def handler() -> Handler:
    return Handler(Store(), Limits(max_key_bytes=16, max_value_bytes=64, max_batch_keys=4))


def call(handler: Handler, op: str, *args, **options):
    return decode_reply(handler.handle(encode_request(op, *args, options=options or None)))


def test_set_then_get(handler):
    assert call(handler, "set", "k", "v") == (0, True)
    assert call(handler, "get", "k") == (0, "v")
    assert call(handler, "get", "missing") == (0, None)


@pytest.mark.parametrize(
    "request_, status",
    [
        (["set", "k"], Status.WRONG_ARITY),
        (["get", "k", "extra"], Status.WRONG_ARITY),
        (["nope", "k"], Status.UNKNOWN_OP),
        ([7, "k"], Status.BAD_REQUEST),
        ([], Status.BAD_REQUEST),
        ({"op": "get"}, Status.BAD_REQUEST),
        (["get", 5], Status.BAD_REQUEST),
        (["set", "k", 5], Status.BAD_REQUEST),
        (["set", "k" * 17, "v"], Status.TOO_LARGE),
        (["set", "k", "v" * 65], Status.TOO_LARGE),
        (["set", "k", "v", {"ttl_s": -1}], Status.BAD_REQUEST),
        (["set", "k", "v", {"ttl_s": "10"}], Status.BAD_REQUEST),
        (["set", "k", "v", {"nx": True, "xx": True}], Status.BAD_REQUEST),
        (["set", "k", "v", {"colour": "red"}], Status.BAD_REQUEST),
        (["get", "k", {"v": 2}], Status.UNSUPPORTED_VERSION),
        (["get", "k", {"v": True}], Status.UNSUPPORTED_VERSION),
        (["mget", ["a", "b", "c", "d", "e"]], Status.TOO_LARGE),
        (["mset", {"a": "1", "b": 2}], Status.BAD_REQUEST),
        (["incr", "k", "1"], Status.BAD_REQUEST),
        (["keys", "*", 12345, 10], Status.BAD_CURSOR),
        (["keys", "*", "0", 10], Status.BAD_REQUEST),
        (["set", "k", "v", {"rid": 5}], Status.BAD_REQUEST),
    ],
)
def test_bad_requests_get_typed_errors_and_change_nothing(handler, request_, status):
    call(handler, "set", "keep", "this")
    code, message = decode_reply(handler.handle(msgpack.packb(request_)))
    assert code == status, message
    assert isinstance(message, str) and message
    assert call(handler, "mget", ["keep", "k", "a", "b"]) == (0, ["this", None, None, None])


@pytest.mark.parametrize(
    "frame",
    [b"", b"\xc1", b"not msgpack", b"\x92\xa3get", msgpack.packb(["get", "k"]) + b"\x00",
     b"\x92\xa3get\xa2\xff\xfe", b"\x91" * 5000 + b"\xc0", b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
     b"\x92\xa3get\xc4\x01k", b"\x81\x01\x02"],
)
def test_garbage_frames_are_refused(handler, frame):
    code, message = decode_reply(handler.handle(frame))
    assert code in (Status.BAD_REQUEST, Status.TOO_LARGE), message


def test_retried_write_with_the_same_rid_is_applied_once(handler):
    assert call(handler, "incr", "n", 5, rid="c:1") == (0, 5)
    assert call(handler, "incr", "n", 5, rid="c:1") == (0, 5)
    assert call(handler, "get", "n") == (0, "5")
    assert call(handler, "incr", "n", 5, rid="c:2") == (0, 10)


def test_a_refused_write_is_not_remembered(handler):
    call(handler, "set", "n", "abc")
    assert call(handler, "incr", "n", 1, rid="c:1")[0] == Status.NOT_INTEGER
    call(handler, "set", "n", "1")
    assert call(handler, "incr", "n", 1, rid="c:1") == (0, 2)


def test_mset_is_all_or_nothing(handler):
    assert call(handler, "mset", {"a": "1", "b": "v" * 65})[0] == Status.TOO_LARGE
    assert call(handler, "mget", ["a", "b"]) == (0, [None, None])


def test_incr_refuses_non_integers_and_overflow(handler):
    for value in ["abc", "1.5", " 1", "", "+1", "99999999999999999999"]:
        call(handler, "set", "n", value)
        assert call(handler, "incr", "n", 1)[0] == Status.NOT_INTEGER, value
        assert call(handler, "get", "n") == (0, value)
    call(handler, "set", "n", str(2**63 - 1))
    assert call(handler, "incr", "n", 1)[0] == Status.NOT_INTEGER


def test_stats_reports_counts_and_limits(handler):
    call(handler, "set", "k", "v")
    call(handler, "nope")
    status, stats = call(handler, "stats")
    assert status == 0
    assert stats["keys"] == 1 and stats["protocol"] == 1
    assert stats["ops"]["set"] == 1 and stats["errors"]["UNKNOWN_OP"] == 1
    assert stats["limits"]["max_key_bytes"] == 16


def test_a_bug_in_an_op_becomes_an_internal_error_reply(handler, monkeypatch):
    def broken(key):
        raise RuntimeError("boom")

    monkeypatch.setattr(handler.store, "get", broken)
    assert call(handler, "get", "k")[0] == Status.INTERNAL
    assert call(handler, "ping") == (0, "PONG")
