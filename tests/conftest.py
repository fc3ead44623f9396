"""Fixtures: real servers on free ports, clients that always close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests import awaited
from tests.containers import image, machine, wheelhouse  # noqa: F401 (session fixtures: one image build)
from tests.servers import ServerProcess


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """A factory for servers (``start_server("--max-key-bytes", "8")``); all are stopped at the end."""
    started: list[ServerProcess] = []

    def start(*args: str, **kwargs: Any) -> ServerProcess:  # kwargs: ServerProcess's
        server = ServerProcess(args, **kwargs)
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
def runner() -> Iterator[asyncio.Runner]:
    """The event loop the asyncio clients of a test run on."""
    yield from awaited.runner()


@pytest.fixture(params=["Client", "AsyncClient"])
def make_client(request: pytest.FixtureRequest, runner: asyncio.Runner) -> Callable[..., Any]:
    """Makes a ``Client``, and in a second run of the test an ``AsyncClient``
    whose every call is awaited (:class:`tests.awaited.Awaited`)."""
    return awaited.client_factory(request.param, runner)


@pytest.fixture
def client(server: ServerProcess, make_client: Callable[..., Any]) -> Iterator[Any]:
    """A client of ``server`` (each kind, see ``make_client``) with a short timeout, so a broken test fails fast."""
    with make_client(server.node, timeout_s=2.0, retries=1) as c:
        yield c


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Container tests run last: a session holds the machine's container lock (tests/containers.py) from its
    first container test to its end, so other sessions on the machine wait only while those run."""
    items.sort(key=lambda item: item.get_closest_marker("containers") is not None)
