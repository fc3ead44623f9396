"""The server assembled in one place (server/app.py): what a start makes, a stop or a failed start releases."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from server.app import StartupError, build_server
from server.config import ServerConfig
from tests.servers import ServerProcess, free_port, run_cli


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _data_dir_is_free(data_dir: Path) -> bool:
    """Another process can take the data directory's lock (a leaked descriptor would keep it)."""
    other = ServerProcess(["--data-dir", str(data_dir)])
    try:
        return "listening on" in other.log
    finally:
        other.stop()


def _config(data_dir: Path, port: int) -> ServerConfig:
    # Every part that holds something: the data dir's lock and journal, the everysec
    # fsync thread, the memory guard, the ZeroMQ context, socket and ZAP thread, metrics.
    return ServerConfig(port=port, data_dir=str(data_dir), fsync="everysec", max_memory_bytes=1 << 30,
                        metrics_port=free_port())


def test_a_start_that_fails_at_the_bind_releases_everything_it_made(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fds, threads = _open_fds(), threading.active_count()
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1 port {port}"):
            build_server(_config(tmp_path, port))
        assert (_open_fds(), threading.active_count()) == (fds, threads)
    assert _data_dir_is_free(tmp_path)


def test_a_stopped_server_releases_everything_and_keeps_what_it_was_told(tmp_path: Path) -> None:
    fds, threads = _open_fds(), threading.active_count()
    with build_server(_config(tmp_path, 0)) as app:
        loop = threading.Thread(target=app.server.serve_forever)
        loop.start()
        assert run_cli(app.server.endpoint.replace("tcp://", ""), "set", "kept", "yes").returncode == 0
        app.server.stop()
        loop.join(5)
    assert (_open_fds(), threading.active_count()) == (fds, threads)
    again = ServerProcess(["--data-dir", str(tmp_path)])
    try:
        assert "loaded 1 keys" in again.log
    finally:
        again.stop()
