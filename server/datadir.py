"""The data directory: its files, its lock, and loading it at start (recovery).

Layout of ``--data-dir`` (docs/PERSISTENCE.md has the full story)::

    lock                 held (fcntl lock) by the live server; holds its pid
    snapshot.00000007    the whole table as it was when journal.00000007 began
    journal.00000007     every batch of changes since, one checksummed record each
    journal.00000008     (while a compaction runs: changes after it began)
    members, last-ready  with --join: the membership's (server/membership.py)
    discarded-.../       with --join: a node's files set aside (server/rejoin.py)

Recovery loads the newest snapshot and replays every journal of that
generation or later; a missing generation between them is refused (files
are missing). Each journal is written under one ``--fsync`` policy, named in
its header record: a server started with another policy, or on a journal of
the older format, begins a new journal instead of appending, and damage at a
journal's end is judged by the policy that wrote it (server/journal.py).
Request ids of applied writes are journaled with their batch and recovered,
so a retry after a crash is answered, not applied again. Damage is refused
with its file and offset, or with ``--repair`` cut away (the caller then
writes a fresh snapshot).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from common.versions import ZERO_VERSION
from server.journal import FSYNC_POLICIES, fsync_dir, journal_start
from server.journaled_store import Journaled
from server.records import (
    JOURNAL_MAGIC,
    JOURNAL_MAGIC_V1,
    JOURNAL_MAGIC_V2,
    SNAPSHOT_MAGIC,
    SNAPSHOT_MAGIC_V1,
    SNAPSHOT_MAGIC_V2,
    Scan,
    scan,
)
from server.replies import RECENT_REPLIES, Remembered

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(snapshot|journal)\.(\d{8})$")


def file_name(kind: str, generation: int) -> str:
    """``snapshot.00000007`` or ``journal.00000007``."""
    return f"{kind}.{generation:08d}"


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


@dataclass
class Recovered:
    """Where the loaded data directory stands: what this run appends to, and what it found."""

    #: The journal generation this run appends to.
    generation: int
    #: Size of the snapshot loaded (0: none).
    snapshot_bytes: int
    #: Write replies remembered by request id, oldest first (the newest RECENT_REPLIES).
    replies: list[Remembered]
    #: Repair dropped something: a fresh snapshot must be written before serving.
    repaired: bool


class DataDir:
    """One ``--data-dir``: its lock, its files by generation, and loading them.

    Args:
        path: the directory (created if missing).
        repair: drop whatever follows damage instead of refusing to start.
    """

    def __init__(self, path: str | os.PathLike[str], repair: bool = False) -> None:
        self.path = Path(path)
        self.repair = repair
        self.report = RecoveryReport()
        self._lock_fd = -1
        self._newest_reusable = False

    def file(self, kind: str, generation: int) -> Path:
        return self.path / file_name(kind, generation)

    def lock(self) -> None:
        """Create the directory if missing and take its lock; holds the pid.

        Raises:
            DataDirLocked: another live server holds it.
            OSError: it cannot be created or locked.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # A POSIX record lock: released when this process dies.
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            holder = os.pread(self._lock_fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise DataDirLocked(
                f"data dir {self.path} is in use by another live server (pid {holder}); "
                "refusing to start"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def table_files(self) -> list[str]:
        """The names of the files that hold the table: snapshots, journals, an unfinished snapshot."""
        return sorted(entry for entry in os.listdir(self.path) if _FILE.match(entry) or entry.endswith(".tmp"))

    def set_aside(self, folder: str, names: list[str]) -> Path:
        """Move the files ``names`` into the new directory ``folder`` of the data dir (kept, never read
        again); returns its path.

        Raises:
            FileExistsError: ``folder`` exists.
            OSError: a file cannot be moved.
        """
        target = self.path / folder
        target.mkdir()
        for name in names:
            os.replace(self.path / name, target / name)
        fsync_dir(target)
        fsync_dir(self.path)
        return target

    def drop_generations_before(self, generation: int) -> None:
        """Delete every file of an older generation (snapshot ``generation`` holds all they did)."""
        for entry in os.listdir(self.path):
            match = _FILE.match(entry)
            if match and int(match.group(2)) < generation:
                (self.path / entry).unlink(missing_ok=True)
        fsync_dir(self.path)

    # -- recovery ------------------------------------------------------------------

    def recover(self, store: Journaled, policy: str) -> Recovered:
        """Load the snapshot and journals into ``store`` (empty); ``policy`` is this run's ``--fsync``.

        Raises:
            RecoveryError: corruption (file and offset named) and no ``repair``.
            OSError: a file cannot be read or written.
        """
        snapshots: list[int] = []
        journals: list[int] = []
        temps: list[str] = []
        for entry in os.listdir(self.path):
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
        recovered: deque[Any] = deque(maxlen=RECENT_REPLIES)
        repaired = bool(self.report.repaired)
        if base:
            repaired |= self._load_snapshot(store, base, now, recovered)
        for position, generation in enumerate(journals):
            last = position == len(journals) - 1
            if self._load_journal(store, generation, now, last, policy, recovered):
                # Repair dropped the rest of this journal: later ones follow a hole.
                for later in journals[position + 1:]:
                    path = self.file("journal", later)
                    self.report.repaired.append(f"{path}: dropped entirely ({path.stat().st_size} bytes)")
                    path.unlink()
                journals = journals[:position + 1]
                repaired = True
                break
        try:
            replies = [((op, rid), reply) for (op, rid), reply in recovered]
        except (TypeError, ValueError) as exc:
            raise RecoveryError(f"data dir {self.path}: a remembered reply does not decode: {exc}") from None
        for entry in temps:
            (self.path / entry).unlink()
        for generation in superseded:
            self.file("journal", generation).unlink()
        for generation in snapshots:
            if generation < base:
                self.file("snapshot", generation).unlink()
        if not journals:
            generation = max(base, 1)
        else:
            # A journal of the older format, or written under another policy, is
            # left as it is: this run's records go to a journal of their own.
            generation = journals[-1] + (0 if self._newest_reusable else 1)
        snapshot_bytes = self.file("snapshot", base).stat().st_size if base else 0
        return Recovered(generation, snapshot_bytes, replies, repaired)

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
        gap = self.file("journal", missing[0])
        after = [g for g in journals if g > missing[0]]
        names = ", ".join(file_name("journal", g) for g in after)
        if not after:
            hole = f": the changes made after {file_name('snapshot', base)} are lost"
        elif base:
            hole = f", so {names} would be replayed over a hole"
        else:
            hole = f" and there is no snapshot before it, so {names} would be replayed over a hole"
        if not self.repair:
            raise RecoveryError(
                f"data dir {self.path}: {gap} is missing{hole}; refusing to start. "
                f"Start once with --repair to keep what is before the gap"
                + (f" and drop {names}" if after else "")
            )
        message = f"{gap} is missing: kept what is before it"
        log.warning("repair: %s", message)
        self.report.repaired.append(message)
        for generation in after:
            path = self.file("journal", generation)
            self.report.repaired.append(
                f"{path}: dropped entirely ({path.stat().st_size} bytes): it follows the missing {gap.name}"
            )
            path.unlink()
        return [g for g in journals if g < missing[0]]

    @staticmethod
    def _read(path: Path, magics: tuple[bytes, ...]) -> Scan:
        with open(path, "rb") as file:
            return scan(file.read(), magics)

    def _load_snapshot(self, store: Journaled, generation: int, now: float, replies: deque[Any]) -> bool:
        """Load one snapshot; True if repair cut it short."""
        path = self.file("snapshot", generation)
        result = self._read(path, (SNAPSHOT_MAGIC, SNAPSHOT_MAGIC_V2, SNAPSHOT_MAGIC_V1))
        ended = bool(result.payloads) and len(result.payloads[-1]) == 0
        problem_at = result.corrupt_at if result.corrupt_at is not None else result.torn_at
        if problem_at is None and not ended:
            problem_at, result.reason = result.valid_bytes, "snapshot has no end record"
        if problem_at is not None:
            self._refuse_or_repair(path, problem_at, result.reason or "snapshot cut short", result.size)
        self._load(store, path, result.payloads, result.magic != SNAPSHOT_MAGIC_V1, result.magic == SNAPSHOT_MAGIC,
                   now, replies)
        return problem_at is not None

    def _load_journal(self, store: Journaled, generation: int, now: float, last: bool, policy: str,
                      replies: deque[Any]) -> bool:
        """Replay one journal; True if repair cut it short.

        For the newest journal (``last``) it also decides whether this run may
        append to it (``_newest_reusable``).
        """
        path = self.file("journal", generation)
        result = self._read(path, (JOURNAL_MAGIC, JOURNAL_MAGIC_V2, JOURNAL_MAGIC_V1))
        current = result.magic == JOURNAL_MAGIC
        headed = result.magic != JOURNAL_MAGIC_V1
        batches = result.payloads
        written_under = None
        if headed and batches:
            written_under = self._journal_policy(path, batches[0])
            batches = batches[1:]
        self._load(store, path, batches, headed, current, now, replies)
        self.report.records += len(batches)
        reusable = current and written_under == policy
        if result.corrupt_at is None and result.torn_at is None:
            if last:
                if not batches and not reusable:  # nothing in it: make it this run's journal
                    self._cut_journal(path, 0, policy)
                    reusable = True
                self._newest_reusable = reusable
            return False
        judged_by = written_under or policy
        if result.torn_whole and FSYNC_POLICIES[judged_by].syncs_each_batch:
            # Every record was fdatasynced before its reply: a crash leaves a
            # record cut short, so a whole one that fails its checksum is
            # damage (most likely to an acknowledged write).
            result.corrupt_at, result.torn_at = result.torn_at, None
            result.reason += f"; written under --fsync {judged_by}, where that is not a torn write"
        if result.corrupt_at is None and last:
            dropped = result.size - result.valid_bytes
            message = (
                f"{path}: torn tail at offset {result.torn_at}: {dropped} bytes of an unfinished write "
                f"dropped, {len(batches)} complete records loaded"
            )
            log.warning("%s", message)
            self.report.warnings.append(message)
            self._cut_journal(path, result.valid_bytes if batches else 0, policy)
            self._newest_reusable = reusable or not batches
            return False
        offset = result.corrupt_at if result.corrupt_at is not None else result.torn_at
        assert offset is not None
        reason = result.reason or "journal cut short before a later journal began"
        self._refuse_or_repair(path, offset, reason, result.size)
        self._cut_journal(path, result.valid_bytes if batches else 0, policy)
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

    @classmethod
    def _load(cls, store: Journaled, path: Path, payloads: list[memoryview], with_replies: bool, versioned: bool,
              now: float, replies: deque[Any]) -> None:
        """Apply the records' entries to ``store`` in order; their replies go to ``replies`` (the newest kept).

        ``with_replies``: the records are ``[entries, replies]`` (formats 2
        and 3). ``versioned``: the entries are records (format 3), which the
        table loads from the bytes (:meth:`~server.store.Store.load_payloads`).
        """
        payloads = [payload for payload in payloads if payload]  # not a snapshot's end record
        if with_replies and versioned:
            try:
                store.load_payloads(payloads, now, replies.extend)
            except (ValueError, TypeError) as exc:  # a checksummed record that does not decode: a bug or tampering
                raise RecoveryError(f"{path}: a record with a valid checksum does not decode: {exc}") from None
            return
        store.load(cls._entries(path, payloads, with_replies, replies), now)

    @staticmethod
    def _entries(path: Path, payloads: list[memoryview], with_replies: bool, replies: deque[Any]) -> Iterator[Any]:
        """Every entry of the older formats (1 and 2) as ``(key, value, version, deadline)``, in order.

        Their entries ``(key, value, deadline)`` get
        :data:`~common.versions.ZERO_VERSION`; ``with_replies``: the records
        are ``[entries, replies]`` (format 2).
        """
        for payload in payloads:
            try:
                record = msgpack.unpackb(payload, raw=False, use_list=False)
                if with_replies:
                    entries, remembered = record
                    replies.extend(remembered)
                else:
                    entries = record
                entries = [(key, value, None if value is None else ZERO_VERSION, deadline)
                           for key, value, deadline in entries]
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
        return str(policy)

    @staticmethod
    def _cut_journal(path: Path, size: int, policy: str) -> None:
        """Cut a journal back to ``size`` bytes; to 0: a fresh journal of this run, with no records."""
        with open(path, "r+b") as file:
            file.truncate(size)
            if size == 0:
                file.write(journal_start(policy))
            file.flush()
            os.fsync(file.fileno())
