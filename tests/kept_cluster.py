"""Clusters whose nodes keep their membership (--join), for tests: real server processes on free ports.

A node's name is given (``--node-name``) and its address is 127.0.0.1 with the
bound port (``--advertise 127.0.0.1``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from client import Client
from client.membership import ANNOUNCE, MEMBERS
from tests.servers import ServerProcess

Start = Callable[..., ServerProcess]


def node(start_server: Start, name: str, *seeds: ServerProcess | str, args: tuple[str, ...] = ()) -> ServerProcess:
    """A node named ``name`` joining through ``seeds`` (servers, or addresses)."""
    join = ",".join(seed if isinstance(seed, str) else seed.node for seed in seeds)
    return start_server("--node-name", name, "--advertise", "127.0.0.1", "--join", join, *args)


def members(server: ServerProcess, **options: Any) -> dict[str, Any]:
    """``server``'s answer to ``members``; ``options`` are :class:`Client`'s (CURVE keys)."""
    with Client(server.node, timeout_s=2.0, **options) as client:
        return client._execute(MEMBERS)


def states(server: ServerProcess, **options: Any) -> dict[str, str]:
    """name -> state, as ``server`` sees them."""
    return {name: entry["state"] for name, entry in members(server, **options)["members"].items()}


def announce(server: ServerProcess, entries: Any) -> Any:
    with Client(server.node, timeout_s=2.0) as client:
        return client._execute(ANNOUNCE, entries)


def eventually(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Wait until ``check()`` holds (membership spreads by gossip, about one round a second)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "did not happen in time"
        time.sleep(0.1)


def entry(address: str, state: str, ms: int, name: str, counter: int = 0) -> dict[str, Any]:
    """A member entry as the wire carries it."""
    return {"address": address, "state": state, "version": [ms, counter, name]}


def now_ms() -> int:
    return time.time_ns() // 1_000_000
