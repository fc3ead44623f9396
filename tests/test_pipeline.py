"""The library's pipelines and streams: many commands in flight on one connection.

The ``client`` and ``make_client`` fixtures run each pipeline test with a
``Client`` and with an ``AsyncClient`` (its ``AsyncPipeline``, awaited).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client import Client, InvalidRequestError, NodeUnavailableError, NotAnIntegerError
from tests.servers import ServerProcess


def test_results_come_back_in_order_for_every_command(client: Any) -> None:
    """Each result is what the Client method returns (mset None, ping True, scan a tuple)."""
    with client.pipeline() as p:
        p.set("a", "1").incr("n").get("a").mset({"x": "1", "y": "2"}).mget(["x", "y", "z"])
        p.exists("a").ttl("a").cas("a", "1", "2").delete("x").ping().scan(0, "y", 10).stats()
    *results, (cursor, found), stats = p.results
    assert results == [True, 1, "1", None, ["1", "2", None], True, -1, True, True, True]
    while cursor:  # a page may end early, when its time slice is up (a loaded machine): walk on
        cursor, more = client.scan(cursor, "y", 10)
        found += more
    assert found == ["y"]
    assert stats["keys"] == 3
    assert client.get("a") == "2"


def test_a_refused_command_does_not_stop_the_others(client: Any) -> None:
    client.set("word", "abc")
    p = client.pipeline()
    p.incr("word").set("after", "yes")
    results = p.execute(raise_on_error=False)
    assert isinstance(results[0], NotAnIntegerError) and results[1] is True
    assert client.get("after") == "yes"
    p.incr("word").set("after2", "yes")
    with pytest.raises(NotAnIntegerError):
        p.execute()
    assert client.get("after2") == "yes"


def test_bad_arguments_are_refused_when_queued(client: Any) -> None:
    p = client.pipeline()
    with pytest.raises(InvalidRequestError):
        p.set("k", 5)
    assert len(p) == 0


def test_more_commands_than_the_window_all_arrive(client: Any) -> None:
    p = client.pipeline(window=4)
    for _i in range(500):
        p.incr("counter")
    assert p.execute()[-1] == 500
    assert client.get("counter") == "500"


def test_an_exception_in_the_with_block_sends_nothing(client: Any) -> None:
    with pytest.raises(RuntimeError):
        with client.pipeline() as p:
            p.set("never", "sent")
            raise RuntimeError("stop")
    assert client.get("never") is None


def test_a_dead_node_raises_node_unavailable(
        start_server: Callable[..., ServerProcess], make_client: Callable[..., Any],
) -> None:
    server = start_server()
    node = server.node
    server.stop()
    with make_client(node, timeout_s=0.2, retries=1) as table:
        p = table.pipeline()
        p.set("a", "1")
        with pytest.raises(NodeUnavailableError, match="may or may not have been applied"):
            p.execute()


def test_a_batch_message_answers_each_request_as_if_alone(server: ServerProcess) -> None:
    """The wire op behind pipelines, sent raw: order, per-item errors, no nesting."""
    import msgpack
    import zmq

    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(f"tcp://{server.node}")
    try:
        items = [["set", "a", "1", {"rid": "t:1"}], ["get", "a"], ["incr", "a", 2, {"rid": "t:2"}],
                 ["nope"], ["batch", []], ["get", 5]]
        sock.send(msgpack.packb(["batch", items]))
        status, replies = msgpack.unpackb(sock.recv())
        assert status == 0
        assert replies[:3] == [[0, True], [0, "1"], [0, 3]]
        assert [reply[0] for reply in replies[3:]] == [2, 1, 1]  # unknown op, nested batch, bad key
        sock.send(msgpack.packb(["batch", "not a list"]))
        assert msgpack.unpackb(sock.recv())[0] == 1
    finally:
        sock.close()


def test_commands_are_packed_into_batch_messages(client: Any) -> None:
    p = client.pipeline(window=64, per_message=8)
    for i in range(40):
        p.set(f"k{i}", str(i))
    p.get("k39")
    assert p.execute()[-1] == "39"
    ops = client.stats()["ops"]
    assert ops["set"] == 40 and ops["batch"] == 5  # 41 commands: 5 messages of 8, the last one alone


def test_large_values_are_not_packed_together(client: Any) -> None:
    big = "x" * (700 * 1024)
    with client.pipeline(per_message=16) as p:
        p.set("big1", big).set("big2", big).set("small", "s").get("small")
    assert p.results == [True, True, True, "s"]
    assert client.stats()["ops"].get("batch", 0) == 1  # big1 alone, then big2 with the two small ones


@pytest.mark.parametrize("kind", ["StreamTransport", "AsyncStreamTransport"])
def test_after_a_restart_no_request_gets_a_later_requests_reply(
        start_server: Callable[..., ServerProcess], tmp_path: Path, runner: asyncio.Runner, kind: str,
) -> None:
    """A request lost with a killed server must not take the reply of one sent after the
    restart (a DEALER left to reconnect by itself sends what was queued meanwhile)."""
    import signal

    from client import async_transport, stream_transport
    from client.requests import payload
    from common.protocol import encode_request

    args = ("--data-dir", str(tmp_path))
    server = start_server(*args)
    with Client(server.node, timeout_s=5) as table:
        table.mset({"a": "A", "b": "B"})
    transport = getattr(stream_transport, kind, None) or getattr(async_transport, kind)
    stream = transport(f"tcp://{server.node}", timeout_s=1, retries=2, window=8)
    step = runner.run if kind.startswith("Async") else (lambda done: done)  # the async one's calls, awaited
    got: dict[str, str] = {}

    def keep(key: str) -> Callable[[bytes], None]:
        def on_reply(frame: bytes) -> None:
            got.setdefault(key, payload(frame))

        return on_reply

    try:
        step(stream.submit(encode_request("ping"), keep("ping")))  # connected, handshake done
        step(stream.drain())
        server.signal(signal.SIGSTOP)
        step(stream.submit(encode_request("get", "a"), keep("a")))  # sits unread in the stopped server
        server.kill()  # the request is lost with it
        start_server(*args, "--port", str(server.port))
        step(stream.submit(encode_request("get", "b"), keep("b")))  # sent once ZeroMQ has reconnected
        step(stream.drain())
    finally:
        stream.close()
    assert got == {"ping": "PONG", "a": "A", "b": "B"}


def test_the_window_stays_at_half_the_servers_reply_queue(client: Any) -> None:
    from client.async_transport import AsyncStreamTransport
    from client.stream_transport import MAX_WINDOW_MESSAGES, StreamTransport

    p = client.pipeline(window=100_000, per_message=1)
    for _ in range(1500):
        p.incr("n")
    assert p.execute()[-1] == 1500
    for transport in (StreamTransport, AsyncStreamTransport):
        assert transport("tcp://127.0.0.1:1", 1.0, 0, window=100_000).window == MAX_WINDOW_MESSAGES == 500


# -- streams (Client.stream): commands sent as given, results to a callback ------------------


def test_a_stream_hands_every_result_to_the_callback_in_order(server: ServerProcess) -> None:
    results: list[Any] = []
    with Client(server.node, timeout_s=2) as table:
        with table.stream(results.append, window=8, per_message=3) as stream:
            for i in range(20):
                stream.set(f"k{i}", str(i)).get(f"k{i}")
            stream.incr("k0", 5).mget(["k1", "nope"]).ping()
        assert results == [value for i in range(20) for value in (True, str(i))] + [5, ["1", None], True]
        assert table.stats()["ops"]["batch"] == 14  # 43 commands, 3 a message: the last one alone


def test_a_stream_sends_before_it_ends(server: ServerProcess) -> None:
    """The point of a stream: a command is on the server before the stream is drained."""
    results: list[Any] = []
    with Client(server.node, timeout_s=2) as table, Client(server.node, timeout_s=2) as other:
        with table.stream(results.append, window=4, per_message=1) as stream:
            stream.set("early", "yes")
            for _ in range(100):  # the server has it within a few milliseconds
                if other.get("early") == "yes":
                    break
            assert other.get("early") == "yes"
        assert results == [True]


def test_a_refusal_goes_to_the_callback_and_a_bad_argument_raises_at_once(server: ServerProcess) -> None:
    results: list[Any] = []
    with Client(server.node, timeout_s=2) as table:
        table.set("word", "abc")
        with table.stream(results.append, per_message=1) as stream:
            stream.incr("word")
            with pytest.raises(InvalidRequestError):
                stream.set("k", 5)  # type: ignore[arg-type]  # nothing sent, nothing to wait for
            stream.set("after", "yes")
        assert isinstance(results[0], NotAnIntegerError) and results[1:] == [True]
        assert table.stats()["ops"]["set"] == 2


def test_an_exception_in_the_callback_abandons_what_is_in_flight_and_the_stream_goes_on(server: ServerProcess) -> None:
    """No reply of an abandoned command may be taken for a later command's."""
    seen: list[Any] = []

    def on_result(result: Any) -> None:
        seen.append(result)
        if result == "first":
            raise RuntimeError("stop")

    with Client(server.node, timeout_s=2) as table:
        table.mset({"a": "first", "b": "second"})
        with table.stream(on_result, window=64, per_message=1) as stream:
            stream.get("a").get("b").get("b")
            with pytest.raises(RuntimeError):
                stream.drain()
            stream.set("c", "third").get("c")
        assert seen == ["first", True, "third"]  # the two gets of "b" were abandoned


def test_a_stream_against_a_dead_node_raises_node_unavailable(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    node = server.node
    server.stop()
    with Client(node, timeout_s=0.2, retries=1) as table:
        stream = table.stream(print, per_message=1)
        stream.set("a", "1")
        with pytest.raises(NodeUnavailableError, match="may or may not have been applied"):
            stream.drain()
        stream.close()
