"""The exceptions memlookup raises.

One base class, then three branches that say whose fault a failure was:

* :class:`InvalidRequestError` -- the caller asked wrongly (a key that is not a
  string, a value over the limit, an unknown operation). Nothing was changed.
* :class:`ServerError` -- the server understood the request and refused it
  (``incr`` on a value that is not an integer, out of memory, a failed disk).
* :class:`NodeUnavailableError` -- no answer came back in time. Whether a write
  happened is unknown. Two causes are told apart, because nothing was sent:
  :class:`NotListeningError` (the connection was refused: nothing listens
  there) and :class:`AuthenticationError` (the server ended the handshake).

And one for this process's own plumbing: :class:`TransportError`, when the
client's ZeroMQ machinery itself fails (its context was terminated, say). No
``zmq`` exception leaves the library: each becomes one of these.
"""

from __future__ import annotations


class MemlookupError(Exception):
    """Base class of every error memlookup raises on purpose."""


class InvalidRequestError(MemlookupError, ValueError):
    """The request was malformed or broke a limit; the store is unchanged.

    ``code`` is the protocol status code when the server reported it, or
    ``None`` when the client caught the mistake before sending.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ServerError(MemlookupError):
    """The server refused a well-formed request; ``code`` says why."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class NotAnIntegerError(ServerError):
    """``incr`` on a value that is not a decimal integer, or would overflow."""


class OutOfMemoryError(ServerError):
    """The server is at its memory limit and its eviction policy forbids evicting."""


class PersistenceError(ServerError):
    """The server could not make the write durable; it was not acknowledged."""


class NodeUnavailableError(MemlookupError):
    """No reply from a node within the timeout, after every retry.

    The node may be down, unreachable, overloaded, or refusing our keys. A write
    that raised this may or may not have been applied.
    """

    def __init__(self, message: str, node: str = "", waited_s: float = 0.0) -> None:
        super().__init__(message)
        self.node = node
        self.waited_s = waited_s


class NotListeningError(NodeUnavailableError):
    """The node refused the TCP connection: nothing listens at its address and port.

    The server is not running there, or listens on another port or address
    (a host that answers "unreachable" is reported the same way). Nothing
    was sent.
    """


class AuthenticationError(NodeUnavailableError):
    """The node ended the connection in its handshake: nothing was sent.

    Its access policy refused us (our address: a server without keys admits
    only loopback peers unless started with ``--allow``; or our CURVE key,
    not among its ``--authorized-keys``), or the two sides' keys do not
    match (a wrong ``--server-key``, or only one side uses CURVE). The
    message says which.
    """


class TransportError(MemlookupError):
    """This process could not use its ZeroMQ socket; the node is not to blame.

    The commonest cause is a terminated ZeroMQ context (``zmq.Context.term()``
    on the context the client was given, or interpreter shutdown); others are
    running out of file descriptors, or a libzmq without CURVE. ``errno`` is
    ZeroMQ's error number. A write cut short this way may or may not have been
    applied. Unlike :class:`NodeUnavailableError` it does not make a
    ``ClusterClient`` mark nodes dead: retrying elsewhere would fail the same way.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
