"""The memlookup client library and command-line tool.

    from client import Client

    with Client("127.0.0.1") as table:
        table.set("norway", "oslo")
        table.get("norway")        # 'oslo'

    from client import ClusterClient   # many nodes, each key on 2 of them

    with ClusterClient("n1,n2,n3", replicas=2) as table:
        table.set("norway", "oslo")
"""

from typing import TYPE_CHECKING

from client.client import Client
from common.errors import (
    AuthenticationError,
    InvalidRequestError,
    MemlookupError,
    NodeUnavailableError,
    NotAnIntegerError,
    NotListeningError,
    OutOfMemoryError,
    PersistenceError,
    ServerError,
    TransportError,
)

if TYPE_CHECKING:  # for type checkers the class itself; at run time __getattr__ imports it
    from client.cluster import ClusterClient


def __getattr__(name: str) -> object:
    # ClusterClient (and its hashing and thread-pool imports) loads on first use,
    # so a single-node program or command does not pay for it.
    if name == "ClusterClient":
        from client.cluster import ClusterClient

        return ClusterClient
    raise AttributeError(f"module 'client' has no attribute {name!r}")


__all__ = [
    "AuthenticationError",
    "Client",
    "ClusterClient",
    "InvalidRequestError",
    "MemlookupError",
    "NodeUnavailableError",
    "NotAnIntegerError",
    "NotListeningError",
    "OutOfMemoryError",
    "PersistenceError",
    "ServerError",
    "TransportError",
]
