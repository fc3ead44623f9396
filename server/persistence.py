"""The data directory: a journal of every batch of changes, plus snapshots.

Layout of ``--data-dir`` (docs/PERSISTENCE.md has the full story)::

    lock                 held (fcntl lock) by the live server; holds its pid
    snapshot.00000007    the whole table as it was when journal.00000007 began
    journal.00000007     every batch of changes since, one checksummed record each
    journal.00000008     (while a compaction runs: changes after it began)

Recovery loads the newest snapshot and replays every journal of that
generation or later; a missing generation between them is refused (files
are missing). Each journal is written under one ``--fsync`` policy, named in
its header record: a server started with another policy, or on a journal of
the older format, begins a new journal instead of appending. Request ids of
applied writes are journaled with the batch (see :meth:`Persistence.attach`)
and recovered, so a retry after a crash is answered, not applied again.
Compaction (when the journal outgrows
``--compact-after-bytes`` and the snapshot) starts a new journal generation,
then writes the table to ``snapshot.N.tmp`` in slices of at most
COMPACTION_SLICE_S, one after each batch (see :class:`SnapshotWriter`); a
thread then fsyncs it, renames it to ``snapshot.N`` and fsyncs the
directory; only then is the older generation deleted. A crash at any step
leaves either the old snapshot plus both journals, or the new snapshot plus
the new journal, and both load to the same table. No request waits for more
than one slice, whatever the size of the table.

Durability of a batch (see :meth:`Persistence.before_reply`): its changes are
applied in memory while the batch is handled, then written as one record,
then (``always``) fdatasync'ed, and only then are the replies sent. If the
write or the fsync fails, the batch is undone in memory and every reply of
the batch from its first change on becomes a ``PERSISTENCE`` error: no write
is acknowledged that is not on disk, and none is left visible that failed.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import itertools
import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import msgpack

from common.protocol import Status, encode_reply
from server.config import COMPACT_AFTER_BYTES, FSYNC_POLICIES
from server.handler import RECENT_REPLIES
from server.journaled_store import JournaledStore
from server.records import (
    JOURNAL_MAGIC,
    JOURNAL_MAGIC_V1,
    SNAPSHOT_MAGIC,
    SNAPSHOT_MAGIC_V1,
    Scan,
    frame,
    scan,
)

log = logging.getLogger(__name__)


#: How often ``everysec`` fsyncs the journal, in a background thread.
EVERYSEC_INTERVAL_S = 1.0

#: Entries (or remembered replies) per snapshot record: small, so that
#: packing one stays well within COMPACTION_SLICE_S.
SNAPSHOT_CHUNK_ENTRIES = 512

#: How long a compaction may hold the loop per batch (and per idle tick).
COMPACTION_SLICE_S = 0.002

#: After a failed compaction, wait this long before trying again.
COMPACTION_RETRY_S = 10.0

_FILE = re.compile(r"^(snapshot|journal)\.(\d{8})$")

#: A remembered write reply: ``((op, rid), reply frame)``, as the handler keeps it.
Remembered = tuple[tuple[str, str], bytes]


class RecoveryError(Exception):
    """The data directory cannot be loaded as it is; the message says where and why."""


class DataDirLocked(RecoveryError):
    """Another live server holds the data directory."""


@dataclass
class RecoveryReport:
    """What loading the data directory found and did."""

    keys: int = 0
    records: int = 0
    load_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)


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

    def __init__(self, directory: Path, generation: int, entries: Iterator[tuple[str, str, float | None]],
                 replies: Iterable[Remembered]) -> None:
        self.generation = generation
        self.final = directory / _name("snapshot", generation)
        self.temp = self.final.with_name(self.final.name + ".tmp")
        self._payloads = self._records(entries, replies)
        self._buffer = bytearray(SNAPSHOT_MAGIC)
        self._fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.longest_slice_ms = 0.0

    @staticmethod
    def _records(entries: Iterator[tuple[str, str, float | None]], replies: Iterable[Remembered]) -> Iterator[bytes]:
        """The payloads ``[entries, replies]``: the replies first, then the table."""
        remembered = iter(replies)
        while chunk := list(itertools.islice(remembered, SNAPSHOT_CHUNK_ENTRIES)):
            yield msgpack.packb(((), chunk))
        while table := list(itertools.islice(entries, SNAPSHOT_CHUNK_ENTRIES)):
            yield msgpack.packb((table, ()))

    def step(self, budget_s: float) -> bool:
        """Copy entries for about ``budget_s``; True when the whole table is in the file."""
        started = time.perf_counter()
        done = True
        for payload in self._payloads:
            self._buffer += frame(payload)
            if len(self._buffer) >= 1 << 20:
                _write_all(self._fd, self._buffer)
                self._buffer.clear()
            if time.perf_counter() - started >= budget_s:
                done = False
                break
        if done and self._buffer:
            _write_all(self._fd, self._buffer)
            self._buffer.clear()
        self.longest_slice_ms = max(self.longest_slice_ms, (time.perf_counter() - started) * 1000)
        return done

    def finish(self) -> None:
        """The end record, fsync, rename, fsync the directory. Touches no table: a thread may run it."""
        try:
            _write_all(self._fd, frame(b""))  # a snapshot without the end record is incomplete
            os.fdatasync(self._fd)
        finally:
            self.close()
        os.rename(self.temp, self.final)
        _fsync_dir(self.final.parent)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def abandon(self) -> None:
        self.close()
        self.temp.unlink(missing_ok=True)


def _name(kind: str, generation: int) -> str:
    return f"{kind}.{generation:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Persistence:
    """Keeps a :class:`JournaledStore` in a data directory.

    Args:
        data_dir: the directory (created if missing).
        policy: ``always``, ``everysec`` or ``no`` (see docs/PERSISTENCE.md).
        store: the table; it must be empty, :meth:`open` fills it.
        compact_after_bytes: journal size that triggers a compaction.
        repair: drop whatever follows corruption instead of refusing to start.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        policy: str,
        store: JournaledStore,
        compact_after_bytes: int = COMPACT_AFTER_BYTES,
        repair: bool = False,
    ) -> None:
        if policy not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {', '.join(FSYNC_POLICIES)}")
        self.dir = Path(data_dir)
        self.policy = policy
        self.store = store
        self.compact_after_bytes = compact_after_bytes
        self.repair = repair
        self.generation = 0
        self.journal_bytes = 0
        self.snapshot_bytes = 0
        self._fd = -1
        self._lock_fd = -1
        self._fd_lock = threading.Lock()
        self._synced_bytes = 0
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        self.broken: str | None = None
        self.last_fsync_unix = 0.0
        self.fsyncs = 0
        self.write_errors = 0
        self.failed_batches = 0
        self.compactions = 0
        self.compaction_failures = 0
        self.last_compaction_pause_ms = 0.0
        self._snapshot: SnapshotWriter | None = None
        self._snapshot_started = 0.0
        self._dropper: threading.Thread | None = None
        self._next_compaction = 0.0
        self.report = RecoveryReport()
        # Per-batch state of the reply wrapper (see attach()).
        self._held: list[bytearray] = []
        self._usual_batch = 1.0
        self._batch_replies: list[Remembered] = []
        # Write replies found by recovery, oldest first, until attach() hands
        # them to the handler; after that the handler's are the ones to keep.
        self._recovered: deque[Remembered] = deque(maxlen=RECENT_REPLIES)
        self._recovered_replies: list[Remembered] = []
        self._replies_now: Callable[[], Iterable[Remembered]] = lambda: self._recovered_replies
        self._newest_reusable = False

    # -- opening and recovery --------------------------------------------------

    def open(self) -> RecoveryReport:
        """Lock the directory, load it into the store, open the journal for appending.

        Raises:
            DataDirLocked: another live server uses the directory.
            RecoveryError: corruption (file and offset named) and no ``repair``,
                or a directory that cannot be read or written.
        """
        started = time.perf_counter()
        collecting = gc.isenabled()
        gc.disable()  # loading makes millions of objects and no cycles: the collector only slows it
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock()
            self._recover()
        except OSError as exc:
            self.close()
            raise RecoveryError(f"cannot use data dir {self.dir}: {exc}") from None
        except RecoveryError:
            self.close()
            raise
        finally:
            if collecting:
                gc.enable()
        gc.freeze()  # the loaded table is permanent: later collections need not scan it
        self.report.keys = len(self.store)
        self.report.load_s = time.perf_counter() - started
        if self.policy == "everysec":
            self._syncer = threading.Thread(target=self._sync_every_second, name="fsync", daemon=True)
            self._syncer.start()
        self.store.recording = True
        return self.report

    def _lock(self) -> None:
        path = self.dir / "lock"
        self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # A POSIX record lock: released when this process dies, and not
            # inherited by the compaction child.
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            holder = os.pread(self._lock_fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise DataDirLocked(
                f"data dir {self.dir} is in use by another live server (pid {holder}); "
                "refusing to start"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)

    def _recover(self) -> None:
        snapshots: list[int] = []
        journals: list[int] = []
        temps: list[str] = []
        for entry in os.listdir(self.dir):
            if entry.endswith(".tmp"):
                temps.append(entry)  # an unfinished snapshot
                continue
            match = _FILE.match(entry)
            if match:
                (snapshots if match.group(1) == "snapshot" else journals).append(int(match.group(2)))
        base = max(snapshots, default=0)
        superseded = [g for g in journals if g < base]  # a compaction finished but had no time to delete them
        journals = self._check_generations(base, sorted(g for g in journals if g >= base))
        now = time.time()
        repaired = bool(self.report.repaired)
        if base:
            repaired |= self._load_snapshot(base, now)
        for position, generation in enumerate(journals):
            last = position == len(journals) - 1
            if self._load_journal(generation, now, last):
                # Repair dropped the rest of this journal: later ones follow a hole.
                for later in journals[position + 1:]:
                    path = self.dir / _name("journal", later)
                    self.report.repaired.append(f"{path}: dropped entirely ({path.stat().st_size} bytes)")
                    path.unlink()
                journals = journals[:position + 1]
                repaired = True
                break
        try:
            self._recovered_replies = [((op, rid), reply) for (op, rid), reply in self._recovered]
        except (TypeError, ValueError) as exc:
            raise RecoveryError(f"data dir {self.dir}: a remembered reply does not decode: {exc}") from None
        self._recovered.clear()
        for entry in temps:
            (self.dir / entry).unlink()
        for generation in superseded:
            (self.dir / _name("journal", generation)).unlink()
        for generation in snapshots:
            if generation < base:
                (self.dir / _name("snapshot", generation)).unlink()
        if not journals:
            self.generation = max(base, 1)
        else:
            # A journal of the older format, or written under another policy, is
            # left as it is: this run's records go to a journal of their own.
            self.generation = journals[-1] + (0 if self._newest_reusable else 1)
        self.snapshot_bytes = (self.dir / _name("snapshot", base)).stat().st_size if base else 0
        self._open_journal(self.generation)
        if repaired:
            self._compact_in_process()

    def _check_generations(self, base: int, journals: list[int]) -> list[int]:
        """The journals to replay over snapshot ``base``: refuse (or repair) a missing generation.

        Snapshot N is only ever written after journal N began, so journals
        ``base``..newest (1..newest without a snapshot) must all be there; a
        missing one held changes that the later ones were made on top of.
        """
        first = base or 1
        newest = journals[-1] if journals else (base or 0)
        present = set(journals)
        missing = [g for g in range(first, newest + 1) if g not in present]
        if not missing:
            return journals
        gap = self.dir / _name("journal", missing[0])
        after = [g for g in journals if g > missing[0]]
        names = ", ".join(_name("journal", g) for g in after)
        if not after:
            hole = f": the changes made after {_name('snapshot', base)} are lost"
        elif base:
            hole = f", so {names} would be replayed over a hole"
        else:
            hole = f" and there is no snapshot before it, so {names} would be replayed over a hole"
        if not self.repair:
            raise RecoveryError(
                f"data dir {self.dir}: {gap} is missing{hole}; refusing to start. "
                f"Start once with --repair to keep what is before the gap"
                + (f" and drop {names}" if after else "")
            )
        message = f"{gap} is missing: kept what is before it"
        log.warning("repair: %s", message)
        self.report.repaired.append(message)
        for generation in after:
            path = self.dir / _name("journal", generation)
            self.report.repaired.append(
                f"{path}: dropped entirely ({path.stat().st_size} bytes): it follows the missing {gap.name}"
            )
            path.unlink()
        return [g for g in journals if g < missing[0]]

    def _read(self, path: Path, magics: tuple[bytes, ...]) -> Scan:
        with open(path, "rb") as file:
            return scan(file.read(), magics)

    def _load_snapshot(self, generation: int, now: float) -> bool:
        path = self.dir / _name("snapshot", generation)
        result = self._read(path, (SNAPSHOT_MAGIC, SNAPSHOT_MAGIC_V1))
        ended = bool(result.payloads) and len(result.payloads[-1]) == 0
        problem_at = result.corrupt_at if result.corrupt_at is not None else result.torn_at
        if problem_at is None and not ended:
            problem_at, result.reason = result.valid_bytes, "snapshot has no end record"
        if problem_at is not None:
            self._refuse_or_repair(path, problem_at, result.reason or "snapshot cut short", result.size)
        self.store.load(self._entries(path, result.payloads, result.magic == SNAPSHOT_MAGIC), now)
        return problem_at is not None

    def _load_journal(self, generation: int, now: float, last: bool) -> bool:
        """Replay one journal; True if repair cut it short.

        For the newest journal (``last``) it also decides whether this run may
        append to it (``_newest_reusable``).
        """
        path = self.dir / _name("journal", generation)
        result = self._read(path, (JOURNAL_MAGIC, JOURNAL_MAGIC_V1))
        current = result.magic == JOURNAL_MAGIC
        batches = result.payloads
        written_under = None
        if current and batches:
            written_under = self._journal_policy(path, batches[0])
            batches = batches[1:]
        self.store.load(self._entries(path, batches, current), now)
        self.report.records += len(batches)
        reusable = written_under == self.policy
        if result.corrupt_at is None and result.torn_at is None:
            if last:
                if not batches and not reusable:  # nothing in it: make it this run's journal
                    self._cut_journal(path, 0)
                    reusable = True
                self._newest_reusable = reusable
            return False
        policy = written_under or self.policy
        if result.torn_whole and policy == "always":
            # Under always every record was fdatasynced before its reply: a
            # crash leaves a record cut short, so a whole one that fails its
            # checksum is damage (most likely to an acknowledged write).
            result.corrupt_at, result.torn_at = result.torn_at, None
            result.reason += "; written under --fsync always, where that is not a torn write"
        if result.corrupt_at is None and last:
            dropped = result.size - result.valid_bytes
            message = (
                f"{path}: torn tail at offset {result.torn_at}: {dropped} bytes of an unfinished write "
                f"dropped, {len(batches)} complete records loaded"
            )
            log.warning("%s", message)
            self.report.warnings.append(message)
            self._cut_journal(path, result.valid_bytes if batches else 0)
            self._newest_reusable = reusable or not batches
            return False
        offset = result.corrupt_at if result.corrupt_at is not None else result.torn_at
        assert offset is not None
        reason = result.reason or "journal cut short before a later journal began"
        self._refuse_or_repair(path, offset, reason, result.size)
        self._cut_journal(path, result.valid_bytes if batches else 0)
        return True

    def _refuse_or_repair(self, path: Path, offset: int, reason: str, size: int) -> None:
        if not self.repair:
            raise RecoveryError(
                f"{path}: corrupt at offset {offset} ({reason}); refusing to start. "
                f"Start once with --repair to keep the {offset} valid bytes before it "
                f"and drop the {size - offset} after"
            )
        message = f"{path}: corrupt at offset {offset} ({reason}): kept {offset} bytes, dropped {size - offset}"
        log.warning("repair: %s", message)
        self.report.repaired.append(message)

    def _entries(self, path: Path, payloads: list[memoryview], with_replies: bool) -> Iterator[Any]:
        """Every ``(key, value, deadline)`` in the records, in order.

        ``with_replies``: the records are ``[entries, replies]`` (the current
        format); their replies are collected, the newest RECENT_REPLIES kept.
        """
        replies = self._recovered
        for payload in payloads:
            if not payload:
                continue  # a snapshot's end record
            try:
                record = msgpack.unpackb(payload, raw=False, use_list=False)
                if with_replies:
                    entries, remembered = record
                    replies.extend(remembered)
                else:
                    entries = record
            except Exception as exc:  # a checksummed record that does not decode: a bug or tampering
                raise RecoveryError(f"{path}: a record with a valid checksum does not decode: {exc}") from None
            yield from entries

    @staticmethod
    def _journal_policy(path: Path, header: memoryview) -> str:
        """The ``--fsync`` policy a journal's header record names."""
        try:
            policy = msgpack.unpackb(header, raw=False)["fsync"]
        except Exception as exc:
            raise RecoveryError(f"{path}: the header record does not decode: {exc}") from None
        if policy not in FSYNC_POLICIES:
            raise RecoveryError(f"{path}: the header record names an unknown fsync policy {policy!r}")
        return policy

    def _journal_start(self) -> bytes:
        """A new journal's first bytes: the magic, then the header record naming this run's policy."""
        return JOURNAL_MAGIC + frame(msgpack.packb({"fsync": self.policy}))

    def _cut_journal(self, path: Path, size: int) -> None:
        """Cut a journal back to ``size`` bytes; to 0: a fresh journal of this run, with no records."""
        with open(path, "r+b") as file:
            file.truncate(size)
            if size == 0:
                file.write(self._journal_start())
            file.flush()
            os.fsync(file.fileno())

    def _open_journal(self, generation: int) -> None:
        path = self.dir / _name("journal", generation)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                start = self._journal_start()
                _write_all(fd, start)
                os.fdatasync(fd)
                _fsync_dir(self.dir)
                size = len(start)
        except OSError:
            os.close(fd)
            raise
        with self._fd_lock:
            old, self._fd = self._fd, fd
            self.generation = generation
            self.journal_bytes = self._synced_bytes = size
        if old >= 0:
            os.close(old)

    # -- serving ----------------------------------------------------------------

    def attach(self, server: Any) -> None:
        """Hook into a :class:`~server.loop.Server`: wrap its handler, make batches durable.

        The handler gets the write replies recovered from the data dir, and
        from now on every reply it remembers in a batch with changes is
        journaled in that batch's record, so it is durable exactly when the
        write is.
        """
        handler = server.handler
        handler.restore_replies(self._recovered_replies)
        self._recovered_replies = []
        self._replies_now = handler.remembered_replies
        inner = handler.handle
        changes = self.store.changes
        held, batch_replies = self._held, self._batch_replies
        replies_since = handler.replies_remembered_since

        def handle(frame_bytes: bytes) -> bytes:
            before, remembered = len(changes), handler.remembered_count
            reply = inner(frame_bytes)
            if not held and len(changes) == before:
                return reply
            # From the batch's first change on, replies stay editable until
            # the batch is durable: a failure turns them into errors.
            editable = bytearray(reply)
            held.append(editable)
            if handler.remembered_count != remembered:  # one request, or a batch of many
                batch_replies.extend(replies_since(remembered))
            return editable  # type: ignore[return-value]

        handler.handle = handle
        self._forget_reply = handler.forget_reply
        server.before_reply = self.before_reply
        if self.policy == "always":
            server.batch_linger = self.batch_linger
        server.periodic.append(self.periodic)
        handler.stats_sections["persistence"] = self.stats

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
        """Make the batch durable, then give a running compaction its slice.

        The slice comes after the batch's fate is settled, so the snapshot only
        ever copies changes that are durable (or were undone).
        """
        self._make_durable(count)
        if self._snapshot is not None:
            self._snapshot_slice()

    def _make_durable(self, count: int) -> None:
        """Write the batch's changes as one record; under ``always`` fsync it. Undo on failure."""
        usual = self._usual_batch
        self._usual_batch = count if count >= usual else usual + (count - usual) / 32
        store = self.store
        if not store.changes:
            self._held.clear()
            self._batch_replies.clear()
            return
        record = frame(msgpack.packb((store.changes, self._batch_replies)))
        good = self.journal_bytes
        try:
            if self.broken:
                raise OSError(errno.EIO, self.broken)
            self._append(record)
            if self.policy == "always":
                try:
                    self._fsync()
                except OSError:
                    self._cut_back(good)  # so that a restart does not bring the failed batch back
                    raise
        except OSError as exc:
            self._fail_batch(exc)
        else:
            store.end_batch()
        self._held.clear()
        self._batch_replies.clear()

    def _append(self, record: bytes) -> None:
        good = self.journal_bytes
        try:
            _write_all(self._fd, record)
        except OSError:
            self.write_errors += 1
            self._cut_back(good)  # take back a partial record
            raise
        self.journal_bytes = good + len(record)

    def _cut_back(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
            self.journal_bytes = size
        except OSError as exc:
            self.broken = f"journal could not be cut back after a failed write: {exc}"

    def _fsync(self) -> None:
        """fdatasync the journal up to what was written; on failure stop acknowledging writes."""
        target = self.journal_bytes
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages:
            # what is on disk is unknown, so stop acknowledging writes.
            self.broken = f"fsync of the journal failed: {exc}; restart the server once the disk is fixed"
            log.error("%s", self.broken)
            raise
        self._synced_bytes = max(self._synced_bytes, target)
        self.last_fsync_unix = time.time()
        self.fsyncs += 1

    def _fail_batch(self, exc: OSError) -> None:
        self.store.undo_batch()
        self.failed_batches += 1
        message = f"write not persisted, nothing changed: {exc.strerror or exc}"
        log.error("persistence: %s", message)
        error = encode_reply(Status.PERSISTENCE, message)
        for reply in self._held:
            reply[:] = error
        for key, _ in self._batch_replies:
            self._forget_reply(key)

    def _sync_every_second(self) -> None:
        while not self._stop.wait(EVERYSEC_INTERVAL_S):
            self.sync()

    def sync(self) -> None:
        """fsync what was written and not yet synced (the ``everysec`` thread's job)."""
        with self._fd_lock:
            if self.journal_bytes == self._synced_bytes or self._fd < 0:
                return
            try:
                self._fsync()
            except OSError:
                pass  # logged, and the server now refuses writes

    def periodic(self) -> None:
        """Reap a finished compaction; start one when the journal has outgrown its bounds."""
        try:
            self._compaction_step()
        except Exception:  # never let housekeeping take the server down
            log.exception("compaction housekeeping failed")
            self._next_compaction = time.monotonic() + COMPACTION_RETRY_S

    def _compaction_step(self) -> None:
        if self._snapshot is not None:
            self._snapshot_slice()
            return
        if self._dropper is not None and self._dropper.is_alive():
            return
        if (
            self.journal_bytes > self.compact_after_bytes
            and self.journal_bytes > self.snapshot_bytes
            and not self.broken
            and time.monotonic() >= self._next_compaction
        ):
            self.compact()

    # -- compaction ---------------------------------------------------------------

    def compact(self) -> bool:
        """Start a compaction: a new journal now, the snapshot in slices between batches.

        Returns False if it could not start.
        """
        started = time.perf_counter()
        generation = self.generation + 1
        try:
            with self._fd_lock:
                if self._synced_bytes != self.journal_bytes:
                    os.fdatasync(self._fd)  # the old journal must be whole before the new begins
                    self._synced_bytes = self.journal_bytes
            self._open_journal(generation)
        except OSError as exc:
            self._compaction_failed(f"cannot start journal {generation}: {exc}")
            (self.dir / _name("journal", generation)).unlink(missing_ok=True)
            return False
        try:
            self._snapshot = SnapshotWriter(self.dir, generation, self.store.items(), self._replies_now())
        except OSError as exc:  # the new journal simply goes on; the old files stay
            self._compaction_failed(f"cannot create the snapshot: {exc}")
            return False
        self._snapshot_started = time.monotonic()
        self.last_compaction_pause_ms = (time.perf_counter() - started) * 1000
        log.info("compaction %d started (paused %.1f ms)", generation, self.last_compaction_pause_ms)
        return True

    def _snapshot_slice(self) -> None:
        """Copy one slice of the table into the running snapshot; hand the end to a thread."""
        writer = self._snapshot
        if writer is None:
            return
        try:
            done = writer.step(COMPACTION_SLICE_S)
        except OSError as exc:
            self._snapshot = None
            writer.abandon()
            self._compaction_failed(f"cannot write the snapshot: {exc}")
            return
        if not done:
            return
        self._snapshot = None
        self.last_compaction_pause_ms = max(self.last_compaction_pause_ms, writer.longest_slice_ms)
        # fsync, rename, fsync the directory, then delete the older generation:
        # file work only (the GIL is released meanwhile), so a thread does it.
        self._dropper = threading.Thread(target=self._finish_compaction, args=(writer,),
                                         name="finish-compaction", daemon=True)
        self._dropper.start()

    def _finish_compaction(self, writer: SnapshotWriter) -> None:
        try:
            writer.finish()
        except OSError as exc:
            writer.abandon()
            self._compaction_failed(f"cannot finish the snapshot: {exc}")
            return
        self._drop_generations_before(writer.generation)
        self.compactions += 1
        log.info("compaction %d done in %.2f s: snapshot %d bytes, longest slice %.1f ms", writer.generation,
                 time.monotonic() - self._snapshot_started, self.snapshot_bytes, writer.longest_slice_ms)

    def _compaction_failed(self, why: str) -> None:
        self.compaction_failures += 1
        self._next_compaction = time.monotonic() + COMPACTION_RETRY_S
        log.error("compaction failed (will retry in %.0f s): %s", COMPACTION_RETRY_S, why)

    def _compact_in_process(self) -> None:
        """Compaction without a child, at startup after a repair."""
        generation = self.generation + 1
        self._open_journal(generation)
        self._write_snapshot(generation)
        self._drop_generations_before(generation)

    def _drop_generations_before(self, generation: int) -> None:
        self.snapshot_bytes = (self.dir / _name("snapshot", generation)).stat().st_size
        for entry in os.listdir(self.dir):
            match = _FILE.match(entry)
            if match and int(match.group(2)) < generation:
                (self.dir / entry).unlink(missing_ok=True)
        _fsync_dir(self.dir)

    def _write_snapshot(self, generation: int) -> None:
        """The table, as it is now, into snapshot.N in one go: temp file, fsync, rename, fsync dir."""
        writer = SnapshotWriter(self.dir, generation, self.store.items(), self._replies_now())
        try:
            while not writer.step(float("inf")):
                pass
        except BaseException:
            writer.abandon()
            raise
        writer.finish()

    # -- reporting and shutdown ------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The ``persistence`` section of ``stats``."""
        return {
            "enabled": True,
            "data_dir": str(self.dir),
            "fsync": self.policy,
            "generation": self.generation,
            "journal_bytes": self.journal_bytes,
            "snapshot_bytes": self.snapshot_bytes,
            "pending_bytes": self.journal_bytes - self._synced_bytes,
            "last_fsync_unix": round(self.last_fsync_unix, 3),
            "last_fsync_age_s": round(time.time() - self.last_fsync_unix, 3) if self.last_fsync_unix else None,
            "fsyncs": self.fsyncs,
            "write_errors": self.write_errors,
            "failed_batches": self.failed_batches,
            "broken": self.broken,
            "compacting": self._snapshot is not None or (self._dropper is not None and self._dropper.is_alive()),
            "compactions": self.compactions,
            "compaction_failures": self.compaction_failures,
            "last_compaction_pause_ms": round(self.last_compaction_pause_ms, 3),
            "loaded_keys": self.report.keys,
            "load_s": round(self.report.load_s, 3),
        }

    def close(self) -> None:
        """Finish a running compaction, fsync the journal, release the lock."""
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        if self._snapshot is not None:  # unfinished: the old generation still holds everything
            self._snapshot.abandon()
            self._snapshot = None
        if self._dropper is not None:
            self._dropper.join()
        with self._fd_lock:
            if self._fd >= 0:
                try:
                    os.fdatasync(self._fd)
                except OSError as exc:
                    log.error("final fsync of the journal failed: %s", exc)
                os.close(self._fd)
                self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def in_memory_stats() -> dict[str, Any]:
    """The ``persistence`` section of a server without a data directory."""
    return {"enabled": False}

