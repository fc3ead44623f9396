"""This node's view of the cluster's membership: entries merged newest-wins, its own entry, kept on disk.

The view is shared by the request loop (``members`` and ``announce``) and
the membership thread (gossip, join and leave, server/membership_thread.py),
so every access takes a lock; each is a few dictionary operations.

With ``--data-dir`` the view is kept in the file ``members`` there (msgpack,
written whole to a temporary file and renamed over it), so a node that
restarts knows the members even if its ``--join`` seeds are down; beside it,
``last-ready`` holds when this node was last ready (unix milliseconds,
written every :data:`READY_STAMP_EVERY_S` while it is, and as it stops),
which says at its next start how long it was away (server/rejoin.py). A
server without ``--join`` is a cluster of one: its view holds only itself,
ready, and nothing is written.

An entry in state ``left`` is kept so that gossip does not bring back an
older entry of that node, for ``forget_left_after_s`` (the tombstone grace):
every node in touch with the cluster has it within a few gossip rounds, and
a node away for longer sets its view aside when it returns
(server/rejoin.py), so after that no node holds an older entry it would have
to outvote. It is then dropped, and refused if gossip offers it again; a
node of that name that comes back joins as a new one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import msgpack

from common.address import DEFAULT_PORT
from common.membership import JOINING, LEAVING, LEFT, READY, Entry, epoch, next_version, parse_entries
from common.versions import Version
from server.store import TOMBSTONE_GRACE_S

log = logging.getLogger(__name__)

#: The view's file in the data directory.
MEMBERS_FILE = "members"

#: The file in the data directory that holds when this node was last ready (unix milliseconds).
READY_STAMP_FILE = "last-ready"

#: How often a ready node writes :data:`READY_STAMP_FILE` (and once more as it
#: stops): after a crash it says the node left up to this much earlier than it did.
READY_STAMP_EVERY_S = 10.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class MemberView:
    """The membership as this node sees it.

    Args:
        name: this node's name (``--node-name``).
        replicas: the cluster's R (``--replicas``).
        dynamic: started with ``--join``: the membership is kept by the nodes.
        data_dir: where the view is kept; None: in memory only.
        forget_left_after_s: how long an entry in state ``left`` is kept (``--tombstone-grace-s``).
        loaded_until_ms: the newest version this node loaded from its data dir
            (ms; 0: none), which a node back from far asks for (server/rejoin.py).
    """

    @classmethod
    def single(cls, name: str = "") -> MemberView:
        """A cluster of one (a handler built without a server's settings), named ``name`` or the host name."""
        name = name or socket.gethostname()
        view = cls(name, 1, False, None)
        view.listening_at(f"{name}:{DEFAULT_PORT}")
        return view

    def __init__(self, name: str, replicas: int, dynamic: bool, data_dir: str | None,
                 forget_left_after_s: float = TOMBSTONE_GRACE_S, loaded_until_ms: int = 0) -> None:
        self.name, self.replicas, self.dynamic = name, replicas, dynamic
        self.up_since_ms = now_ms()
        self.loaded_until_ms = loaded_until_ms
        self._forget_left_after_ms = forget_left_after_s * 1000
        self.address = ""
        self._dirty = False  # changed since it was last saved
        #: Set by the ``leave`` op; the membership thread runs the procedure.
        self.leave_requested = threading.Event()
        #: Records pushed to their new owners by the leave procedure, and why its last attempt stopped.
        self.pushed = 0
        self.leave_error: str | None = None
        self._lock = threading.Lock()
        self._saving = threading.Lock()  # one writer of the file at a time
        self._path = Path(data_dir) / MEMBERS_FILE if data_dir is not None and dynamic else None
        self._stamp_path = Path(data_dir) / READY_STAMP_FILE if data_dir is not None and dynamic else None
        self._stamped_s = -READY_STAMP_EVERY_S
        self._entries: dict[str, Entry] = saved_view(self._path) if self._path is not None else {}
        self._epoch = epoch(self._entries)

    def listening_at(self, address: str) -> None:
        """This node's own entry, once its address is known (the port is bound).

        Until it has joined, a node of a kept membership says it is joining
        (its data may be behind); a cluster of one is ready from the start.
        """
        with self._lock:
            self.address = address
            self._set_own(JOINING if self.dynamic else READY)
            self._changed()

    # -- reading -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """This node's own state."""
        with self._lock:
            return self._entries[self.name].state

    @property
    def epoch(self) -> int:
        with self._lock:
            return self._epoch

    def entries(self) -> dict[str, Entry]:
        """A copy of the view."""
        with self._lock:
            return dict(self._entries)

    def reply(self) -> dict[str, Any]:
        """The ``members`` reply."""
        with self._lock:
            return {"epoch": self._epoch, "replicas": self.replicas, "dynamic": self.dynamic,
                    "members": {name: entry.wire() for name, entry in self._entries.items()}}

    def node(self) -> dict[str, Any]:
        """The ``node`` op's answer: who this node is, and since when it holds what (server/rejoin.py)."""
        with self._lock:
            return {"name": self.name, "address": self.address, "state": self._entries[self.name].state,
                    "epoch": self._epoch, "up_since_ms": self.up_since_ms, "loaded_until_ms": self.loaded_until_ms}

    def peers(self) -> dict[str, str]:
        """The other members that have not left: name -> address."""
        with self._lock:
            return {name: entry.address for name, entry in self._entries.items()
                    if name != self.name and entry.state != LEFT}

    def leave(self) -> dict[str, Any]:
        """The ``leave`` op: ask the membership thread to run the leave procedure (once), and say
        where it stands: ``state`` (``leaving`` until it is done, then ``left``), the records
        ``pushed`` so far, and the ``error`` that stopped the last attempt (a new ``leave`` retries).

        Raises:
            ValueError: this node keeps no membership (it runs without ``--join``).
        """
        if not self.dynamic:
            raise ValueError("this node keeps no membership (it runs without --join): there is nothing to leave")
        self.leave_requested.set()
        with self._lock:
            state = self._entries[self.name].state
            return {"state": state if state in (LEAVING, LEFT) else LEAVING, "pushed": self.pushed,
                    "error": self.leave_error}

    # -- changing ------------------------------------------------------------------

    def become(self, state: str) -> dict[str, Entry]:
        """Set this node's own state with a newer version; returns its entry, to announce."""
        with self._lock:
            self._set_own(state)
            self._changed()
            return {self.name: self._entries[self.name]}

    def merge(self, entries: dict[str, Entry]) -> dict[str, bool]:
        """Merge entries (checked by :func:`common.membership.parse_entries`): name -> whether it was applied.

        An entry is applied when its version is newer than the one held.
        One naming this node never changes its state: a newer one (this
        node's older life, say, gossiped back) makes it re-issue its own
        entry with a version past it.
        """
        applied: dict[str, bool] = {}
        forgotten_before_ms = now_ms() - self._forget_left_after_ms
        with self._lock:
            for name, entry in entries.items():
                held = self._entries.get(name)
                newer = held is None or entry.version > held.version
                if name == self.name:
                    if newer:
                        self._set_own(self._entries[name].state, past=entry.version)
                    applied[name] = False
                    continue
                if entry.state == LEFT and entry.version[0] < forgotten_before_ms:
                    newer = False  # forgotten here, or about to be: it must not come back
                if newer:
                    self._entries[name] = entry
                applied[name] = newer
            if any(applied.values()) or self._epoch != epoch(self._entries):
                self._changed()
        return applied

    def forget_left(self) -> list[str]:
        """Drop the other members' ``left`` entries older than ``forget_left_after_s``; their names."""
        forgotten_before_ms = now_ms() - self._forget_left_after_ms
        with self._lock:
            gone = [name for name, entry in self._entries.items()
                    if name != self.name and entry.state == LEFT and entry.version[0] < forgotten_before_ms]
            for name in gone:
                del self._entries[name]
            if gone:
                self._changed()
        return gone

    def save(self, stopping: bool = False) -> None:
        """Write the view to the data directory (when there is one and it changed since), and
        while this node is ready, when it was (every :data:`READY_STAMP_EVERY_S`, and ``stopping``).

        Called by the membership thread after each change of this node's own
        state and each gossip round, and once more as the server stops, so
        never by the request loop.
        """
        if self._path is None:
            return
        with self._saving:
            self._stamp_ready(stopping)
            with self._lock:
                if not self._dirty:
                    return
                data = msgpack.packb({name: entry.wire() for name, entry in self._entries.items()})
                self._dirty = False
            _write_whole(self._path, data)

    def _stamp_ready(self, stopping: bool) -> None:
        now_s = time.time()
        if self._stamp_path is None or self.state != READY:
            return
        if stopping or now_s - self._stamped_s >= READY_STAMP_EVERY_S:
            _write_whole(self._stamp_path, str(int(now_s * 1000)).encode())
            self._stamped_s = now_s

    # -- inside the lock -----------------------------------------------------------

    def _set_own(self, state: str, past: Version | None = None) -> None:
        held = self._entries.get(self.name)
        versions = [version for version in (held.version if held else None, past) if version is not None]
        last = max(versions) if versions else None
        self._entries[self.name] = Entry(self.address, state, next_version(self.name, last, now_ms()))
        self._dirty = True

    def _changed(self) -> None:
        self._epoch = epoch(self._entries)
        self._dirty = True



def saved_view(path: Path) -> dict[str, Entry]:
    """The view kept in ``path`` (a ``members`` file); empty if there is none or it is damaged."""
    if not path.exists():
        return {}
    try:
        return parse_entries(msgpack.unpackb(path.read_bytes()), now_ms())
    except (OSError, ValueError) as exc:  # msgpack's decoding errors are ValueErrors
        # The view heals from the seeds and gossip; a damaged copy is not worth refusing to start.
        log.warning("ignoring %s: %s", path, exc)
        return {}


def last_ready_s(data_dir: Path) -> float | None:
    """When the node keeping ``data_dir`` was last ready (unix seconds), from its
    :data:`READY_STAMP_FILE`; None if there is none or it does not hold a time."""
    try:
        return int((data_dir / READY_STAMP_FILE).read_bytes()) / 1000
    except (OSError, ValueError):
        return None


def _write_whole(path: Path, data: bytes) -> None:
    """``data`` as the whole of ``path``: written to a temporary file, fsynced, renamed over it."""
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
