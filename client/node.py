"""What a client of one node knows before it opens a socket; shared by Client and AsyncClient."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Generic, TypeVar

from client.requests import RequestIds
from common.address import endpoint, split_node

if TYPE_CHECKING:
    from client.curve import CurveKeys
    from common.keys import KeySource

#: The ZeroMQ context class the client opens its sockets in.
C = TypeVar("C")

#: Commands a pipeline keeps in flight by default.
DEFAULT_WINDOW = 256

#: Commands packed into one ``batch`` message by default: the server pays
#: its per-message socket cost once for all of them.
DEFAULT_PER_MESSAGE = 16


class NodeSettings(Generic[C]):
    """The node's address (checked here, its name looked up by each new
    connection), the timeout and retries of each call, the CurveZMQ keys,
    and the ids this client gives its writes.

    Arguments as :class:`client.Client`'s.

    Raises:
        ValueError: ``node`` is not an address;
            ``timeout_s`` is not positive or ``retries`` negative; a key file
            is missing or holds no key.
    """

    def __init__(
        self,
        node: str,
        timeout_s: float,
        retries: int,
        context: C | None,
        default_port: int,
        server_key: KeySource | None,
        client_key: KeySource | None,
        wait_for_ready: bool = True,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries!r}")
        self.node = node
        #: ``tcp://host:port`` as given: a host name is resolved when a connection opens.
        self.endpoint = endpoint(*split_node(node, default_port))
        self._curve: CurveKeys | None = None
        if server_key is not None or client_key is not None:
            from client.curve import CurveKeys  # only secured clients pay for its imports

            self._curve = CurveKeys.from_options(server_key, client_key)
        self._timeout_s, self._retries = timeout_s, retries
        self._wait_for_ready = wait_for_ready
        self._context = context  # for sockets of this process; a forked child uses its own
        self._context_pid = os.getpid()
        self._rids = RequestIds()

    def _context_here(self) -> C | None:
        """The context we were given, in the process that gave it; None
        (the process's own ``instance()``) in a forked child."""
        return self._context if self._context_pid == os.getpid() else None

    @staticmethod
    def _window_messages(window: int | None, per_message: int | None) -> tuple[int, int]:
        """(messages in flight, commands per message) for a pipeline's ``window`` and ``per_message``."""
        per_message = per_message or DEFAULT_PER_MESSAGE
        if per_message < 1:
            raise ValueError(f"per_message must be at least 1, not {per_message}")
        return max(1, (window or DEFAULT_WINDOW) // per_message), per_message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.node!r}, endpoint={self.endpoint!r})"
