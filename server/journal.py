"""The journal being appended to, and the ``--fsync`` policies that decide when it reaches the disk.

A journal file starts with its magic and a header record naming the policy
it is written under (server/records.py); every later record is one batch of
changes, appended by :class:`server.persistence.Persistence` before the
batch's replies are sent. The policies, as Redis's ``appendfsync``:

``always`` (:class:`FsyncAlways`)
    every batch is fdatasynced before its replies go out (concurrent writers
    share one fsync: the loop lingers for them, see
    :meth:`~server.persistence.Persistence.batch_linger`). A crash can then
    only leave a last record cut short, so recovery takes a whole last
    record that fails its checksum for damage, not for a torn write.
``everysec`` (:class:`FsyncEverysec`)
    a thread fsyncs what was written about once a second.
``no`` (:class:`FsyncNo`)
    the operating system decides.

After a failed fsync the kernel may have dropped the dirty pages, so what
is on disk is unknown: the journal is then :attr:`Journal.broken` and no
more writes are acknowledged until a restart.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import ClassVar

import msgpack

from server.records import JOURNAL_MAGIC, frame

log = logging.getLogger(__name__)

#: How often ``everysec`` fsyncs the journal, in a background thread.
EVERYSEC_INTERVAL_S = 1.0


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (os.write may take less)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a file created or renamed in it survives a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def journal_start(policy: str) -> bytes:
    """A new journal's first bytes: the magic, then the header record naming its ``--fsync`` policy."""
    return JOURNAL_MAGIC + frame(msgpack.packb({"fsync": policy}))


class Journal:
    """The journal file of the current generation: appends records, cuts a failed one back, fsyncs.

    The loop's thread appends; the ``everysec`` thread and a compaction
    starting a new generation take :attr:`lock` around the descriptor.

    Args:
        policy: the ``--fsync`` policy's name, written in the header of every
            journal this object starts.
    """

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.generation = 0
        #: Bytes in the file, and of those the bytes known to be on disk.
        self.bytes = 0
        self.synced_bytes = 0
        #: Why writes are refused (a failed fsync, or a cut that failed), or None.
        self.broken: str | None = None
        self.fsyncs = 0
        self.last_fsync_unix = 0.0
        self.write_errors = 0
        self.lock = threading.Lock()
        self._fd = -1

    def open(self, path: Path, generation: int) -> None:
        """Append to ``path`` from now on (the journal of ``generation``), starting it if it is new.

        The previous journal's descriptor is closed (not fsynced: see
        :meth:`sync_all`).

        Raises:
            OSError: the file cannot be opened or started.
        """
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                start = journal_start(self.policy)
                write_all(fd, start)
                os.fdatasync(fd)
                fsync_dir(path.parent)
                size = len(start)
        except OSError:
            os.close(fd)
            raise
        with self.lock:
            old, self._fd = self._fd, fd
            self.generation = generation
            self.bytes = self.synced_bytes = size
        if old >= 0:
            os.close(old)

    def append(self, record: bytes) -> None:
        """Append one record; on failure cut back what part of it was written, and raise.

        Raises:
            OSError: the write failed, or the journal is broken.
        """
        if self.broken:
            raise OSError(errno.EIO, self.broken)
        good = self.bytes
        try:
            write_all(self._fd, record)
        except OSError:
            self.write_errors += 1
            self.cut_back(good)
            raise
        self.bytes = good + len(record)

    def cut_back(self, size: int) -> None:
        """Cut the file back to ``size`` bytes (a failed record); if that fails, the journal is broken."""
        try:
            os.ftruncate(self._fd, size)
            self.bytes = size
        except OSError as exc:
            self.broken = f"journal could not be cut back after a failed write: {exc}"

    def fsync(self) -> None:
        """fdatasync what was written; on failure the journal is broken (and this raises).

        Raises:
            OSError: the fsync failed.
        """
        target = self.bytes
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages:
            # what is on disk is unknown, so stop acknowledging writes.
            self.broken = f"fsync of the journal failed: {exc}; restart the server once the disk is fixed"
            log.error("%s", self.broken)
            raise
        self.synced_bytes = max(self.synced_bytes, target)
        self.last_fsync_unix = time.time()
        self.fsyncs += 1

    def sync(self) -> None:
        """fsync what was written and not yet synced (the ``everysec`` thread's job); never raises."""
        with self.lock:
            if self.bytes == self.synced_bytes or self._fd < 0:
                return
            try:
                self.fsync()
            except OSError:
                pass  # logged, and the server now refuses writes

    def sync_all(self) -> None:
        """fdatasync everything written (before a new generation begins: the old journal must be whole).

        Raises:
            OSError: the fsync failed.
        """
        with self.lock:
            if self.synced_bytes != self.bytes:
                os.fdatasync(self._fd)
                self.synced_bytes = self.bytes

    def close(self) -> None:
        """fsync the journal (a clean stop loses nothing in any mode) and close it."""
        with self.lock:
            if self._fd >= 0:
                try:
                    os.fdatasync(self._fd)
                except OSError as exc:
                    log.error("final fsync of the journal failed: %s", exc)
                os.close(self._fd)
                self._fd = -1


class FsyncPolicy:
    """When the journal is fsynced; the base leaves it to the operating system."""

    #: The ``--fsync`` name, also written in each journal's header.
    name: ClassVar[str]
    #: Every batch is on disk before its replies are sent.
    syncs_each_batch: ClassVar[bool] = False

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def start(self) -> None:
        """Begin (once the data directory is loaded)."""

    def committed(self, good_bytes: int) -> None:
        """A batch's record was appended after ``good_bytes``: make it as durable as the policy says.

        Raises:
            OSError: it could not be made so (the record was taken back).
        """

    def stop(self) -> None:
        """End (before the journal is closed)."""


class FsyncAlways(FsyncPolicy):
    name = "always"
    syncs_each_batch = True

    def committed(self, good_bytes: int) -> None:
        try:
            self.journal.fsync()
        except OSError:
            self.journal.cut_back(good_bytes)  # so that a restart does not bring the failed batch back
            raise


class FsyncEverysec(FsyncPolicy):
    name = "everysec"

    def __init__(self, journal: Journal) -> None:
        super().__init__(journal)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._sync_every_second, name="fsync", daemon=True)
        self._thread.start()

    def _sync_every_second(self) -> None:
        while not self._stop.wait(EVERYSEC_INTERVAL_S):
            self.journal.sync()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class FsyncNo(FsyncPolicy):
    name = "no"


#: Every policy by its ``--fsync`` name, in the order ``--help`` lists them.
FSYNC_POLICIES: dict[str, type[FsyncPolicy]] = {policy.name: policy for policy in (FsyncAlways, FsyncEverysec, FsyncNo)}
