"""Snapshots, and compaction: the journals rewritten as one snapshot, a slice at a time between batches.

When the journal outgrows ``--compact-after-bytes`` and the last snapshot,
:class:`Compaction` starts journal generation N+1, then writes the table to
``snapshot.N+1.tmp`` in slices of at most :data:`COMPACTION_SLICE_S`, one
after each batch and on idle ticks (:class:`SnapshotWriter`); a thread then
fsyncs it, renames it to ``snapshot.N+1`` and fsyncs the directory; only then
are the older generations deleted. A crash at any step leaves either the old
snapshot plus both journals, or the new snapshot plus the new journal, and
both load to the same table. No request waits for more than one slice,
whatever the size of the table.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import msgpack

from server.datadir import DataDir, file_name
from server.journal import Journal, fsync_dir, write_all
from server.records import SNAPSHOT_MAGIC, frame
from server.replies import Remembered
from server.store import Store

log = logging.getLogger(__name__)

#: Default ``--compact-after-bytes`` (Redis: auto-aof-rewrite-min-size).
COMPACT_AFTER_BYTES = 64 * 1024 * 1024

#: Entries (or remembered replies) per snapshot record: small, so that
#: packing one stays well within COMPACTION_SLICE_S.
SNAPSHOT_CHUNK_ENTRIES = 512

#: How long a compaction may hold the loop per batch (and per idle tick).
COMPACTION_SLICE_S = 0.002

#: After a failed compaction, wait this long before trying again.
COMPACTION_RETRY_S = 10.0


class SnapshotWriter:
    """Writes the table into ``snapshot.N.tmp`` a slice at a time, then finishes it.

    The table is read between batches, in the loop's own thread, so that
    every value it copies is one whose batch was already made durable (a
    writer thread could copy a change that a failed fsync then undoes). The
    snapshot is fuzzy: a key may be copied before or after a change made
    while the writer runs, but every such change is also in journal N, and
    recovery replays journal N over snapshot N with absolute puts and
    removes, which gives the same table either way.

    ``replies`` are the write replies remembered when journal N began,
    oldest first: the journals that held them are deleted once the snapshot
    is done.
    """

    def __init__(self, directory: Path, generation: int, table: Store, replies: Iterable[Remembered]) -> None:
        self.generation = generation
        self.final = directory / file_name("snapshot", generation)
        self.temp = self.final.with_name(self.final.name + ".tmp")
        self._payloads = self._records(table, replies)
        self._buffer = bytearray(SNAPSHOT_MAGIC)
        self._fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.longest_slice_ms = 0.0

    @staticmethod
    def _records(table: Store, replies: Iterable[Remembered]) -> Iterator[bytes]:
        """The payloads ``[entries, replies]``: the replies first, then the table (packed by the table)."""
        remembered = iter(replies)
        while chunk := list(itertools.islice(remembered, SNAPSHOT_CHUNK_ENTRIES)):
            yield msgpack.packb(((), chunk))
        yield from table.snapshot_payloads(SNAPSHOT_CHUNK_ENTRIES)

    def step(self, budget_s: float) -> bool:
        """Copy entries for about ``budget_s``; True when the whole table is in the file."""
        started = time.perf_counter()
        done = True
        for payload in self._payloads:
            self._buffer += frame(payload)
            if len(self._buffer) >= 1 << 20:
                write_all(self._fd, self._buffer)
                self._buffer.clear()
            if time.perf_counter() - started >= budget_s:
                done = False
                break
        if done and self._buffer:
            write_all(self._fd, self._buffer)
            self._buffer.clear()
        self.longest_slice_ms = max(self.longest_slice_ms, (time.perf_counter() - started) * 1000)
        return done

    def finish(self) -> None:
        """The end record, fsync, rename, fsync the directory. Touches no table: a thread may run it."""
        try:
            write_all(self._fd, frame(b""))  # a snapshot without the end record is incomplete
            os.fdatasync(self._fd)
        finally:
            self.close()
        os.rename(self.temp, self.final)
        fsync_dir(self.final.parent)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def abandon(self) -> None:
        self.close()
        self.temp.unlink(missing_ok=True)


class Compaction:
    """Keeps the data directory bounded by rewriting its journals as a snapshot.

    Args:
        data_dir: the directory.
        journal: the journal being appended to; a compaction starts its next generation.
        store: the table the snapshot copies.
        replies: the write replies remembered now, oldest first (they go into the snapshot).
        compact_after_bytes: journal size that makes a compaction due.
        snapshot_bytes: the size of the snapshot loaded at start (0: none).
    """

    def __init__(self, data_dir: DataDir, journal: Journal, store: Store,
                 replies: Callable[[], Iterable[Remembered]], compact_after_bytes: int = COMPACT_AFTER_BYTES,
                 snapshot_bytes: int = 0) -> None:
        self.data_dir = data_dir
        self.journal = journal
        self.store = store
        self.replies = replies
        self.compact_after_bytes = compact_after_bytes
        self.snapshot_bytes = snapshot_bytes
        self.compactions = 0
        self.failures = 0
        self.last_pause_ms = 0.0
        self._snapshot: SnapshotWriter | None = None
        self._started = 0.0
        self._finisher: threading.Thread | None = None
        self._next_try = 0.0

    @property
    def running(self) -> bool:
        return self._snapshot is not None or (self._finisher is not None and self._finisher.is_alive())

    def periodic(self) -> None:
        """Copy a slice, or start a compaction when the journal has outgrown its bounds (idle ticks)."""
        try:
            if self._snapshot is not None:
                self.slice()
            elif not self.running and self._due():
                self.start()
        except Exception:  # never let housekeeping take the server down
            log.exception("compaction housekeeping failed")
            self._next_try = time.monotonic() + COMPACTION_RETRY_S

    def _due(self) -> bool:
        journal = self.journal
        return (journal.bytes > self.compact_after_bytes and journal.bytes > self.snapshot_bytes
                and not journal.broken and time.monotonic() >= self._next_try)

    def start(self) -> bool:
        """Start a compaction: a new journal now, the snapshot in slices between batches.

        Returns False if it could not start.
        """
        started = time.perf_counter()
        generation = self.journal.generation + 1
        path = self.data_dir.file("journal", generation)
        try:
            self.journal.sync_all()  # the old journal must be whole before the new begins
            self.journal.open(path, generation)
        except OSError as exc:
            self._failed(f"cannot start journal {generation}: {exc}")
            path.unlink(missing_ok=True)
            return False
        try:
            self._snapshot = SnapshotWriter(self.data_dir.path, generation, self.store, self.replies())
        except OSError as exc:  # the new journal simply goes on; the old files stay
            self._failed(f"cannot create the snapshot: {exc}")
            return False
        self._started = time.monotonic()
        self.last_pause_ms = (time.perf_counter() - started) * 1000
        log.info("compaction %d started (paused %.1f ms)", generation, self.last_pause_ms)
        return True

    def slice(self) -> None:
        """Copy one slice of the table into the running snapshot (after a batch whose fate is settled,
        so the snapshot only copies durable changes); hand the end to a thread."""
        writer = self._snapshot
        if writer is None:
            return
        try:
            done = writer.step(COMPACTION_SLICE_S)
        except (OSError, ValueError) as exc:  # ValueError: a record the format cannot hold (a lone surrogate)
            self._snapshot = None
            writer.abandon()  # never finished: its payloads stopped short
            self._failed(f"cannot write the snapshot: {exc}")
            return
        if not done:
            return
        self._snapshot = None
        self.last_pause_ms = max(self.last_pause_ms, writer.longest_slice_ms)
        # fsync, rename, fsync the directory, then delete the older generations:
        # file work only (the GIL is released meanwhile), so a thread does it.
        self._finisher = threading.Thread(target=self._finish, args=(writer,), name="finish-compaction",
                                          daemon=True)
        self._finisher.start()

    def _finish(self, writer: SnapshotWriter) -> None:
        try:
            writer.finish()
        except OSError as exc:
            writer.abandon()
            self._failed(f"cannot finish the snapshot: {exc}")
            return
        self._drop_before(writer.generation)
        self.compactions += 1
        log.info("compaction %d done in %.2f s: snapshot %d bytes, longest slice %.1f ms", writer.generation,
                 time.monotonic() - self._started, self.snapshot_bytes, writer.longest_slice_ms)

    def _failed(self, why: str) -> None:
        self.failures += 1
        self._next_try = time.monotonic() + COMPACTION_RETRY_S
        log.error("compaction failed (will retry in %.0f s): %s", COMPACTION_RETRY_S, why)

    def write_now(self) -> None:
        """A whole compaction at once, before serving (after a repair dropped damaged data).

        Raises:
            OSError: a file cannot be written.
        """
        generation = self.journal.generation + 1
        self.journal.open(self.data_dir.file("journal", generation), generation)
        writer = SnapshotWriter(self.data_dir.path, generation, self.store, self.replies())
        try:
            while not writer.step(float("inf")):
                pass
        except BaseException:
            writer.abandon()
            raise
        writer.finish()
        self._drop_before(generation)

    def _drop_before(self, generation: int) -> None:
        self.snapshot_bytes = self.data_dir.file("snapshot", generation).stat().st_size
        self.data_dir.drop_generations_before(generation)

    def close(self) -> None:
        """Drop an unfinished snapshot (the old generation still holds everything); wait for one finishing."""
        if self._snapshot is not None:
            self._snapshot.abandon()
            self._snapshot = None
        if self._finisher is not None:
            self._finisher.join()
