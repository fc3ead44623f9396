"""A node that refuses the connection, ends the handshake, or says nothing: told apart.

A refusal is seen by the ZeroMQ monitor of the client's socket and reported
at once (the CLI does not wait it out); silence is still a timeout, whose
message says how far the connection got.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from client import Client, NodeUnavailableError, NotListeningError
from common.errors import AuthenticationError
from common.keys import create_key_pair
from tests.servers import ServerProcess, free_port, run_cli

#: With --timeout 10 --retries 2 a refusal waited out would take 30 s; one
#: attempt alone 10 s. A report under ONE_ATTEMPT_S waited for nothing (the
#: CLI's own start-up, a second or more on a loaded machine, is well within).
ONE_ATTEMPT_S = 10.0


def _timed_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = run_cli("--timeout", str(ONE_ATTEMPT_S), "--retries", "2", *args)
    return result, time.monotonic() - started


def test_nothing_listening_is_reported_at_once(server: ServerProcess) -> None:
    node = f"127.0.0.1:{free_port()}"
    result, took_s = _timed_cli(node, "get", "k")
    assert (result.returncode, result.stdout) == (4, "")
    assert result.stderr == f"error: connection refused: is memlookup-server running on {node}?\n"
    assert took_s < ONE_ATTEMPT_S
    named, _ = _timed_cli(f"localhost:{node.split(':')[1]}", "get", "k")
    assert named.stderr == f"error: connection refused by localhost:{node.split(':')[1]}: is memlookup-server " \
                           f"running on {node}?\n"


def _own_address() -> str:
    """An IPv4 address of this host that is not loopback: a connection to it
    comes from it, so the server sees a non-loopback peer without a netns."""
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True,
                           text=True, check=False).stdout.split()
    addresses = [shown[i + 1].split("/")[0] for i, word in enumerate(shown[:-1]) if word == "inet"]
    if not addresses:
        pytest.skip("this host has no non-loopback IPv4 address (test_security_netns.py covers it)")
    return addresses[0]


def test_protected_mode_refusal_is_reported_at_once_and_says_what_to_do(
        start_server: Callable[..., ServerProcess]) -> None:
    address = _own_address()
    server = start_server("--bind", address, host=address)
    result, took_s = _timed_cli(server.node, "ping")
    assert result.returncode == 4
    assert result.stderr == (
        f"error: {server.node}: refused by the server's access policy: without keys it admits only loopback "
        "peers unless started with --allow NETWORK (or give it keys: --curve-secret-key, and --server-key "
        "here)\n")
    assert took_s < ONE_ATTEMPT_S
    assert server.wait_for_log(f"refused a connection from {address}: address not allowed")
    allowed = start_server("--bind", address, "--allow", f"{address}/32", host=address)
    assert run_cli(allowed.node, "ping").stdout == "PONG\n"


@pytest.fixture
def curve_server(start_server: Callable[..., ServerProcess], tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    public, secret = create_key_pair(tmp_path, "server")
    yield start_server("--curve-secret-key", str(secret)), public


def test_a_plaintext_client_of_a_curve_server_is_told_to_give_its_key(
        curve_server: tuple[ServerProcess, Path]) -> None:
    server, public = curve_server
    result, took_s = _timed_cli(server.node, "ping")
    assert result.returncode == 4
    assert result.stderr == (f"error: {server.node}: the handshake failed, the server dropped the connection: "
                             "does it use CurveZMQ? Then give --server-key (its .key file)\n")
    assert took_s < ONE_ATTEMPT_S
    assert run_cli("--server-key", str(public), server.node, "ping").stdout == "PONG\n"


def test_a_curve_client_of_a_plaintext_server_is_told_its_key_is_wrong(
        server: ServerProcess, tmp_path: Path) -> None:
    public, _ = create_key_pair(tmp_path, "server")
    result, took_s = _timed_cli("--server-key", str(public), server.node, "ping")
    assert result.returncode == 4
    assert result.stderr == (f"error: {server.node}: the CURVE handshake failed: wrong --server-key, or the "
                             "server is not using CURVE\n")
    assert took_s < ONE_ATTEMPT_S


def test_a_port_that_accepts_tcp_but_speaks_no_zeromq_times_out_and_says_so() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # the kernel completes connections; nothing ever answers
        node = f"127.0.0.1:{listener.getsockname()[1]}"
        result = run_cli("--timeout", "0.3", "--retries", "1", node, "ping")
    assert result.returncode == 4
    assert result.stderr == (f"error: no reply from {node} within 0.6 s (2 attempts of 0.3 s): the TCP connection "
                             "was made, but the ZeroMQ handshake never finished (a stopped or overloaded server, "
                             "or not a ZeroMQ one?)\n")


def test_a_server_that_never_answers_times_out_and_says_it_was_connected() -> None:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    try:
        node = f"127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
        result = run_cli("--timeout", "0.3", "--retries", "1", node, "ping")
    finally:
        router.close(linger=0)
        context.term()
    assert result.returncode == 4
    assert result.stderr == (f"error: no reply from {node} within 0.6 s (2 attempts of 0.3 s): connected, but the "
                             "server did not answer (busy, or stuck?)\n")


def test_an_oversized_request_is_dropped_and_the_message_says_why(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--max-message-bytes", "1000")
    result = run_cli("--timeout", "0.3", "--retries", "0", server.node, "set", "k", "x" * 2000)
    assert result.returncode == 4
    assert result.stderr == (f"error: no reply from {server.node} within 0.3 s (1 attempt of 0.3 s): the server "
                             "closed the connection after our request (was it over its --max-message-bytes?)\n")


# -- the library -----------------------------------------------------------------------------------


def test_the_library_waits_out_a_refusal_by_default_then_names_it() -> None:
    node = f"127.0.0.1:{free_port()}"
    with Client(node, timeout_s=0.2, retries=1) as table:
        started = time.monotonic()
        with pytest.raises(NotListeningError) as refused:
            table.ping()
        assert time.monotonic() - started >= 0.4
    assert str(refused.value).startswith(f"connection refused: is memlookup-server running on {node}? (no reply")
    assert isinstance(refused.value, NodeUnavailableError) and refused.value.node == node


def test_the_library_can_report_a_refusal_at_once() -> None:
    with Client(f"127.0.0.1:{free_port()}", timeout_s=ONE_ATTEMPT_S, retries=2, wait_for_ready=False) as table:
        started = time.monotonic()
        with pytest.raises(NotListeningError):
            table.ping()
        assert time.monotonic() - started < ONE_ATTEMPT_S


def test_a_client_that_waits_gets_its_answer_from_a_server_started_meanwhile(
        start_server: Callable[..., ServerProcess]) -> None:
    port = free_port()
    starter = threading.Timer(0.3, lambda: start_server("--port", str(port)))
    starter.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout_s=15, retries=0) as table:
            assert table.ping()
    finally:
        starter.join()


def test_a_refused_client_key_is_an_authentication_error_at_once(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    public, secret = create_key_pair(tmp_path, "server")
    create_key_pair(tmp_path / "authorized", "alice")
    _, stranger = create_key_pair(tmp_path / "other", "mallory")
    server = start_server("--curve-secret-key", str(secret), "--authorized-keys", str(tmp_path / "authorized"))
    with Client(server.node, timeout_s=ONE_ATTEMPT_S, retries=2, server_key=str(public),
                client_key=str(stranger)) as table:
        started = time.monotonic()
        with pytest.raises(AuthenticationError, match="refused our client key"):
            table.ping()
        assert time.monotonic() - started < ONE_ATTEMPT_S
