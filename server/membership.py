"""This node's view of the cluster's membership: entries merged newest-wins, its own entry, kept on disk.

The view is shared by the request loop (``members`` and ``announce``) and
the membership thread (gossip, join and leave, server/membership_thread.py),
so every access takes a lock; each is a few dictionary operations.

With ``--data-dir`` the view is kept in the file ``members`` there (msgpack,
written whole to a temporary file and renamed over it), so a node that
restarts knows the members even if its ``--join`` seeds are down. A server
without ``--join`` is a cluster of one: its view holds only itself, ready,
and nothing is written.
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

log = logging.getLogger(__name__)

#: The view's file in the data directory.
MEMBERS_FILE = "members"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class MemberView:
    """The membership as this node sees it.

    Args:
        name: this node's name (``--node-name``).
        replicas: the cluster's R (``--replicas``).
        dynamic: started with ``--join``: the membership is kept by the nodes.
        data_dir: where the view is kept; None: in memory only.
    """

    @classmethod
    def single(cls, name: str = "") -> MemberView:
        """A cluster of one (a handler built without a server's settings), named ``name`` or the host name."""
        name = name or socket.gethostname()
        view = cls(name, 1, False, None)
        view.listening_at(f"{name}:{DEFAULT_PORT}")
        return view

    def __init__(self, name: str, replicas: int, dynamic: bool, data_dir: str | None) -> None:
        self.name, self.replicas, self.dynamic = name, replicas, dynamic
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
        self._entries: dict[str, Entry] = self._load()
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
        """The ``node`` op's answer: who this node is."""
        with self._lock:
            return {"name": self.name, "address": self.address, "state": self._entries[self.name].state,
                    "epoch": self._epoch}

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
        with self._lock:
            for name, entry in entries.items():
                held = self._entries.get(name)
                newer = held is None or entry.version > held.version
                if name == self.name:
                    if newer:
                        self._set_own(self._entries[name].state, past=entry.version)
                    applied[name] = False
                    continue
                if newer:
                    self._entries[name] = entry
                applied[name] = newer
            if any(applied.values()) or self._epoch != epoch(self._entries):
                self._changed()
        return applied

    def save(self) -> None:
        """Write the view to the data directory (when there is one and it changed since).

        Called by the membership thread after each change of this node's own
        state and each gossip round, and once more as the server stops, so
        never by the request loop.
        """
        if self._path is None:
            return
        with self._saving:
            with self._lock:
                if not self._dirty:
                    return
                data = msgpack.packb({name: entry.wire() for name, entry in self._entries.items()})
                self._dirty = False
            temporary = self._path.with_suffix(".tmp")
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self._path)

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

    def _load(self) -> dict[str, Entry]:
        if self._path is None or not self._path.exists():
            return {}
        try:
            raw = msgpack.unpackb(self._path.read_bytes())
            return parse_entries(raw, now_ms())
        except (OSError, ValueError) as exc:  # msgpack's decoding errors are ValueErrors
            # The view heals from the seeds and gossip; a damaged copy is not worth refusing to start.
            log.warning("ignoring %s: %s", self._path, exc)
            return {}
