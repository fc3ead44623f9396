"""The server as an operator runs it: flags, environment, signals, addresses."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import msgpack
import pytest
import zmq

from client import Client
from common.protocol import decode_reply
from tests.servers import ROOT, free_port


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_answers_requests_in_flight_and_exits_0_within_a_second(start_server, signum):
    server = start_server()
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{server.node}")
    try:
        big = msgpack.packb(["mset", {f"k{i}": "v" * 100 for i in range(10_000)}])
        for _ in range(10):
            sock.send_multipart([b"", big])
        time.sleep(0.05)
        stopped = time.monotonic()
        server.signal(signum)
        replies: list[tuple[int, object]] = []
        while len(replies) < 10 and sock.poll(3000):
            replies.append(decode_reply(sock.recv_multipart()[-1]))
        assert replies == [(0, True)] * 10
        assert server.proc.wait(5) == 0
        assert time.monotonic() - stopped < 1.0 + 0.5  # 0.5 s of slack for a loaded machine
        assert "stopped" in server.log
    finally:
        sock.close()
        context.term()


def test_port_and_bind_from_environment(start_server):
    port = free_port()
    server = start_server(env={"MEMLOOKUP_PORT": str(port), "MEMLOOKUP_BIND": "127.0.0.1"})
    assert server.port == port
    with Client(f"127.0.0.1:{port}") as table:
        assert table.ping()


def test_flag_beats_environment(start_server):
    server = start_server("--max-key-bytes", "4", env={"MEMLOOKUP_MAX_KEY_BYTES": "100"})
    with Client(server.node) as table:
        assert table.stats()["limits"]["max_key_bytes"] == 4


def test_ipv6_loopback(start_server):
    server = start_server("--bind", "::1", host="::1")
    with Client(f"[::1]:{server.port}") as table:
        table.set("k", "v")
        assert table.get("k") == "v"


def test_hostname_node(server):
    with Client(f"localhost:{server.port}") as table:
        assert table.ping()


def test_port_in_use_is_a_clear_error(server):
    result = subprocess.run([sys.executable, "-m", "server", "--port", str(server.port)],
                            cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert "cannot listen" in result.stderr and str(server.port) in result.stderr


@pytest.mark.parametrize("args", [["--port", "70000"], ["--max-value-bytes", "0"], ["--log-level", "loud"],
                                  ["--port", "seven"]])
def test_bad_flags_exit_2(args):
    result = subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=20)
    assert result.returncode == 2 and "error:" in result.stderr


def test_help_shows_environment_variables_and_defaults():
    text = subprocess.run([sys.executable, "-m", "server", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=20).stdout
    for flag, env in [("--bind", "MEMLOOKUP_BIND"), ("--port", "MEMLOOKUP_PORT"),
                      ("--log-level", "MEMLOOKUP_LOG_LEVEL"), ("--max-value-bytes", "MEMLOOKUP_MAX_VALUE_BYTES")]:
        assert flag in text and env in text
    assert "default: 7400" in text


def test_log_level_debug_shows_refusals(start_server):
    server = start_server("--log-level", "debug")
    with Client(server.node) as table:
        with pytest.raises(ValueError):
            table.set("k" * 5000, "v")
    assert server.wait_for_log("DEBUG")
    assert "refused a request: TOO_LARGE" in server.log


def test_log_level_warning_hides_info(start_server):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        with Client(f"127.0.0.1:{port}", timeout_s=2, retries=5) as table:
            assert table.ping()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "INFO" not in err


def test_man_pages_are_current():
    result = subprocess.run([sys.executable, "man/generate.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
