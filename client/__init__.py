"""The memlookup client library and command-line tool.

    from client import Client

    with Client("127.0.0.1") as table:
        table.set("norway", "oslo")
        table.get("norway")        # 'oslo'

    from client import ClusterClient   # many nodes, each key on 2 of them

    with ClusterClient("n1,n2,n3", replicas=2) as table:
        table.set("norway", "oslo")
"""

from client.client import Client
from client.cluster import ClusterClient
from common.errors import (
    InvalidRequestError,
    MemlookupError,
    NodeUnavailableError,
    NotAnIntegerError,
    OutOfMemoryError,
    PersistenceError,
    ServerError,
)

__all__ = [
    "Client",
    "ClusterClient",
    "InvalidRequestError",
    "MemlookupError",
    "NodeUnavailableError",
    "NotAnIntegerError",
    "OutOfMemoryError",
    "PersistenceError",
    "ServerError",
]
