"""Connections lent one call at a time, so that threads sharing a client never share a socket.

A ZeroMQ socket must not be used by two threads at once, nor by a child
process after ``fork()``. So a client keeps a :class:`Pool` of connections: a
call takes an idle one (or opens a new one), uses it alone, and gives it
back. Threads that share a client then each have their own socket while they
call, as many requests are in flight as threads are calling, and one
thread's timeout never holds up another's call (redis-py's ConnectionPool
works the same way). At most ``max_idle`` connections are kept between calls.

In a child after ``fork()`` the pool forgets the parent's connections without
touching them (closing them there would break the parent's), and opens new
ones in the child.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

#: Idle connections a pool keeps by default; more threads than this calling
#: at once still each get their own, but the extra ones are closed after use.
MAX_IDLE = 32

_fork_lock = threading.Lock()


def _renew_fork_lock() -> None:
    global _fork_lock
    _fork_lock = threading.Lock()  # the parent's may have been held by a thread that is not here


os.register_at_fork(after_in_child=_renew_fork_lock)


def fork_lock() -> threading.Lock:
    """The lock under which an object replaces what it inherited across ``fork()``
    (so that two threads of the child do not both replace it). A new one in each child."""
    return _fork_lock


class Closeable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closeable)

#: What :meth:`Pool.take` returns and :meth:`Pool.give` takes back: the
#: connection, and the pool's generation when it was taken.
Lease = tuple[int, C]


class Pool(Generic[C]):
    """Idle connections made by ``make``, lent to one caller at a time.

    Args:
        make: opens a new connection (called without any lock held).
        max_idle: most connections kept between calls.
    """

    def __init__(self, make: Callable[[], C], max_idle: int = MAX_IDLE) -> None:
        self._make = make
        self._max_idle = max_idle
        self._idle: list[C] = []
        self._generation = 0  # changed by close(): what was lent before is closed when given back
        self._pid = os.getpid()

    # take and give are on every call's path, so they take no lock: list.pop
    # and list.append are atomic (measured: a lock each way tripled their cost).

    def take(self) -> Lease[C]:
        """An idle connection, or a new one; give it back with :meth:`give`."""
        if self._pid != os.getpid():
            self._forget_parent()
        generation = self._generation
        try:
            return generation, self._idle.pop()
        except IndexError:
            return generation, self._make()

    def give(self, lease: Lease[C]) -> None:
        """Return a connection: kept for the next call, or closed if the pool was
        closed since it was taken, or is full."""
        generation, connection = lease
        if generation == self._generation and len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        """Close the idle connections; those lent out are closed when given back.
        The pool stays usable: the next :meth:`take` opens a new connection."""
        if self._pid != os.getpid():
            self._forget_parent()
        self._generation += 1
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _forget_parent(self) -> None:
        with fork_lock():
            if self._pid != os.getpid():
                self._idle = []  # the parent's sockets: never touched here
                self._pid = os.getpid()
