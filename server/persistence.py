"""Durable batches: the table kept in a data directory (docs/PERSISTENCE.md).

:class:`Persistence` opens the data directory (its lock and recovery:
server/datadir.py), appends every batch of changes to the journal under the
``--fsync`` policy (server/journal.py), and compacts the journals into
snapshots (server/snapshot.py). It takes part in the loop through the hooks
server/app.py passes to the loop: :meth:`~Persistence.durable` around the
handler, :meth:`~Persistence.before_reply`, :meth:`~Persistence.batch_linger`
under ``always``, and :meth:`~Persistence.periodic`.

Durability of a batch: its changes are applied in memory while the batch is
handled, then written as one record with the replies of its writes that
carry a request id, then (``always``) fdatasynced, and only then are the
replies sent. If the write or the fsync fails, the batch is undone in memory
and every reply of the batch from its first change on becomes a
``PERSISTENCE`` error: no write is acknowledged that is not on disk, and
none is left visible that failed.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import msgpack

from common.protocol import Status, encode_reply
from server.datadir import DataDir, RecoveryError, RecoveryReport
from server.journal import FsyncPolicy, Journal
from server.journaled_store import Journaled
from server.records import frame
from server.replies import Remembered, RememberedReplies
from server.snapshot import COMPACT_AFTER_BYTES, Compaction

log = logging.getLogger(__name__)


class Persistence:
    """Keeps a :class:`~server.journaled_store.Journaled` table in a data directory.

    Args:
        data_dir: the directory (created if missing).
        fsync: the ``--fsync`` policy's class (server/journal.py).
        store: the table; it must be empty, :meth:`open` fills it.
        replies: the write replies remembered by request id, which the
            handler shares: :meth:`open` restores them, every batch journals
            its new ones.
        compact_after_bytes: journal size that makes a compaction due.
        repair: drop whatever follows corruption instead of refusing to start.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        fsync: type[FsyncPolicy],
        store: Journaled,
        replies: RememberedReplies | None = None,
        compact_after_bytes: int = COMPACT_AFTER_BYTES,
        repair: bool = False,
    ) -> None:
        self.store = store
        self.replies = replies if replies is not None else RememberedReplies()
        self.data_dir = DataDir(data_dir, repair)
        self.journal = Journal(fsync.name)
        self.fsync = fsync(self.journal)
        self.compaction = Compaction(self.data_dir, self.journal, store, self.replies.snapshot, compact_after_bytes)
        self.failed_batches = 0
        # Per batch: the replies held from its first change on (a failure
        # rewrites them), the write replies to journal with it, and the
        # recent batch sizes (see batch_linger).
        self._held: list[bytearray] = []
        self._batch_replies: list[Remembered] = []
        self._usual_batch = 1.0

    @property
    def report(self) -> RecoveryReport:
        return self.data_dir.report

    def open(self, before_load: Callable[[DataDir], object] | None = None) -> RecoveryReport:
        """Lock the directory, load it into the store and the replies, open the journal for appending.

        ``before_load`` is called once the directory is locked, before it is
        read: where a node back after longer than the tombstone grace sets
        its files aside (server/rejoin.py).

        Raises:
            DataDirLocked: another live server uses the directory.
            RecoveryError: corruption (file and offset named) and no ``repair``,
                or a directory that cannot be read or written.
        """
        started = time.perf_counter()
        collecting = gc.isenabled()
        gc.disable()  # loading makes millions of objects and no cycles: the collector only slows it
        try:
            self.data_dir.lock()
            if before_load is not None:
                before_load(self.data_dir)
            recovered = self.data_dir.recover(self.store, self.fsync.name)
            self.replies.restore(recovered.replies)
            self.journal.open(self.data_dir.file("journal", recovered.generation), recovered.generation)
            self.compaction.snapshot_bytes = recovered.snapshot_bytes
            if recovered.repaired:
                self.compaction.write_now()
        except OSError as exc:
            self.close()
            raise RecoveryError(f"cannot use data dir {self.data_dir.path}: {exc}") from None
        except RecoveryError:
            self.close()
            raise
        finally:
            if collecting:
                gc.enable()
        gc.freeze()  # the loaded table is permanent: later collections need not scan it
        report = self.data_dir.report
        report.keys = len(self.store)
        report.load_s = time.perf_counter() - started
        self.fsync.start()
        self.store.recording = True
        return report

    # -- the loop's hooks -----------------------------------------------------------

    def durable(self, handle: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        """``handle``, with every reply from the batch's first change on held until the batch is durable.

        A held reply is a ``bytearray`` the loop sends as it is, which
        :meth:`before_reply` rewrites as an error if the batch cannot be made
        durable. The replies each request remembers by request id are
        collected to be journaled with the batch, so they are durable exactly
        when their writes are.
        """
        changes, held, batch_replies, replies = self.store.changes, self._held, self._batch_replies, self.replies

        def handle_durably(frame_bytes: bytes) -> bytes:
            before, remembered = len(changes), replies.count
            reply = handle(frame_bytes)
            if not held and len(changes) == before:
                return reply
            editable = bytearray(reply)
            held.append(editable)
            if replies.count != remembered:  # one request, or a batch of many
                batch_replies.extend(replies.since(remembered))
            return editable  # type: ignore[return-value]  # the loop sends it as bytes

        return handle_durably

    def batch_linger(self, size: int) -> int:
        """Milliseconds the loop should wait for more requests to join a batch of ``size``.

        Under ``always`` each batch costs an fsync, so a batch should hold a
        request from every writer that is active. Their number is estimated by
        the recent batch sizes: a batch with changes that is well below them
        waits up to 1 ms for the others; a lone writer never waits.
        """
        if not self.store.changes:
            return 0  # nothing to fsync yet: readers need not wait
        return 1 if size < self._usual_batch * 0.75 else 0

    def before_reply(self, count: int) -> None:
        """Make the batch of ``count`` requests durable, then give a running compaction its slice.

        The slice comes after the batch's fate is settled, so the snapshot only
        ever copies changes that are durable (or were undone).
        """
        self._make_durable(count)
        self.compaction.slice()

    def periodic(self) -> None:
        """Between batches: a compaction's slice, or the start of one that is due."""
        self.compaction.periodic()

    def _make_durable(self, count: int) -> None:
        """Write the batch's changes as one record and make it durable by the policy; undo on failure."""
        usual = self._usual_batch
        self._usual_batch = count if count >= usual else usual + (count - usual) / 32
        store = self.store
        if not store.changes:
            self._held.clear()
            self._batch_replies.clear()
            return
        record = frame(msgpack.packb((store.changes, self._batch_replies)))
        good = self.journal.bytes
        try:
            self.journal.append(record)
            self.fsync.committed(good)
        except OSError as exc:
            self._fail_batch(exc)
        else:
            store.end_batch()
        self._held.clear()
        self._batch_replies.clear()

    def _fail_batch(self, exc: OSError) -> None:
        self.store.undo_batch()
        self.failed_batches += 1
        message = f"write not persisted, nothing changed: {exc.strerror or exc}"
        log.error("persistence: %s", message)
        error = encode_reply(Status.PERSISTENCE, message)
        for reply in self._held:
            reply[:] = error
        for key, _ in self._batch_replies:
            self.replies.forget(key)

    # -- reporting and shutdown ------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The ``persistence`` section of ``stats``."""
        journal, compaction, report = self.journal, self.compaction, self.data_dir.report
        return {
            "enabled": True,
            "data_dir": str(self.data_dir.path),
            "fsync": self.fsync.name,
            "generation": journal.generation,
            "journal_bytes": journal.bytes,
            "snapshot_bytes": compaction.snapshot_bytes,
            "pending_bytes": journal.bytes - journal.synced_bytes,
            "last_fsync_unix": round(journal.last_fsync_unix, 3),
            "last_fsync_age_s": round(time.time() - journal.last_fsync_unix, 3) if journal.last_fsync_unix else None,
            "fsyncs": journal.fsyncs,
            "write_errors": journal.write_errors,
            "failed_batches": self.failed_batches,
            "broken": journal.broken,
            "compacting": compaction.running,
            "compactions": compaction.compactions,
            "compaction_failures": compaction.failures,
            "last_compaction_pause_ms": round(compaction.last_pause_ms, 3),
            "loaded_keys": report.keys,
            "load_s": round(report.load_s, 3),
        }

    def close(self) -> None:
        """Stop the fsync policy, drop an unfinished compaction, fsync and close the journal, unlock."""
        self.fsync.stop()
        self.compaction.close()
        self.journal.close()
        self.data_dir.unlock()


def in_memory_stats() -> dict[str, Any]:
    """The ``persistence`` section of a server without a data directory."""
    return {"enabled": False}

