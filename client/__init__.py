"""The memlookup client library and command-line tool.

    from client import Client

    with Client("127.0.0.1") as table:
        table.set("norway", "oslo")
        table.get("norway")        # 'oslo'
"""

from client.client import Client
from common.errors import (
    AuthenticationError,
    InvalidRequestError,
    MemlookupError,
    NodeUnavailableError,
    NotAnIntegerError,
    OutOfMemoryError,
    PersistenceError,
    ServerError,
)

__all__ = [
    "AuthenticationError",
    "Client",
    "InvalidRequestError",
    "MemlookupError",
    "NodeUnavailableError",
    "NotAnIntegerError",
    "OutOfMemoryError",
    "PersistenceError",
    "ServerError",
]
