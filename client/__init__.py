"""The memlookup client library and command-line tool.

    from client import Client

    with Client("127.0.0.1") as table:
        table.set("norway", "oslo")
        table.get("norway")        # 'oslo'

    from client import ClusterClient   # many nodes, each key on 2 of them

    with ClusterClient("n1,n2,n3", replicas=2) as table:
        table.set("norway", "oslo")

    from client import AsyncClient     # the same methods, for asyncio

    async with AsyncClient("127.0.0.1") as table:
        await table.set("norway", "oslo")
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

if TYPE_CHECKING:  # for type checkers the classes themselves; at run time __getattr__ imports them
    from client.async_client import AsyncClient, AsyncPipeline
    from client.async_cluster import AsyncClusterClient
    from client.cluster import ClusterClient
    from client.pipeline import Pipeline, Stream

def __getattr__(name: str) -> object:
    # Loaded on first use, so that a single-node program or command does not
    # pay for the cluster's hashing and threads, or for asyncio. (Imports
    # written out: an installed copy rewrites them to memlookup.client.)
    if name in ("AsyncClient", "AsyncPipeline"):
        from client import async_client

        return getattr(async_client, name)
    if name == "AsyncClusterClient":
        from client.async_cluster import AsyncClusterClient

        return AsyncClusterClient
    if name == "ClusterClient":
        from client.cluster import ClusterClient

        return ClusterClient
    if name in ("Pipeline", "Stream"):
        from client import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'client' has no attribute {name!r}")


__all__ = [
    "AsyncClient",
    "AsyncClusterClient",
    "AsyncPipeline",
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
    "Pipeline",
    "ServerError",
    "Stream",
    "TransportError",
]
