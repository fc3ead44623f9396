"""Fixtures: real servers on free ports, clients that always close."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from client import Client
from tests.servers import ServerProcess


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """A factory for servers (``start_server("--max-key-bytes", "8")``); all are stopped at the end."""
    started: list[ServerProcess] = []

    def start(*args: str, **kwargs: object) -> ServerProcess:
        server = ServerProcess(args, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """One fresh in-memory server."""
    return start_server()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    """A client of ``server`` with a short timeout, so a broken test fails fast."""
    with Client(server.node, timeout_s=2.0, retries=1) as c:
        yield c
