"""The data directory: restarts, TTLs, torn tails, corruption, the lock, compaction, a full disk.

Every test runs real ``python -m server`` processes on a data directory under
``tmp_path`` and looks at the table through the real client. The torn-tail
sweep over every offset of the last record also loads the directory through
:class:`Persistence` in this process, to try every offset quickly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import msgpack
import pytest

from client import Client
from common.errors import PersistenceError
from server.journal import FsyncAlways
from server.journaled_store import JournaledStore
from server.persistence import Persistence
from server.records import JOURNAL_MAGIC, JOURNAL_MAGIC_V1, SNAPSHOT_MAGIC, frame, scan
from server.store import Store
from tests.servers import ServerProcess, run_server
from tests.tables import TABLES


def _start(data_dir: Path, *args: str) -> ServerProcess:
    return ServerProcess(["--data-dir", str(data_dir), *args])


def _fill(data_dir: Path, pairs: dict[str, str], *args: str) -> None:
    """Write ``pairs`` one request each through a server, then stop it cleanly."""
    server = _start(data_dir, "--fsync", "always", *args)
    try:
        with Client(server.node, timeout_s=5.0) as client:
            for key, value in pairs.items():
                client.set(key, value)
    finally:
        assert server.stop() == 0


def _kill(server: ServerProcess) -> None:
    server.signal(signal.SIGKILL)
    server.proc.wait()


def _flip_byte(path: Path, offset: int, mask: int) -> bytes:
    """XOR one byte of a file with ``mask``; returns the damaged content."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))
    return bytes(data)


def _table(server: ServerProcess) -> dict[str, str | None]:
    with Client(server.node, timeout_s=5.0) as client:
        keys = sorted(client.keys())
        return dict(zip(keys, client.mget(keys), strict=True))


def _record_offsets(path: Path, magic: bytes) -> list[int]:
    """Where each record of a data file starts, and the end of the last (a journal's record 0 is its header)."""
    data = path.read_bytes()
    found = scan(data, (magic,))
    offsets = [len(magic)]
    for payload in found.payloads:
        offsets.append(offsets[-1] + 12 + len(payload))
    return offsets


PAIRS = {f"country:{i}": f"capital-{i}" for i in range(6)}


def _filled_journal(tmp_path: Path, name: str = "data", *args: str) -> tuple[Path, Path, list[int]]:
    """A data dir holding PAIRS, one record each: (dir, its journal, the record offsets)."""
    data_dir = tmp_path / name
    _fill(data_dir, PAIRS, *args)
    journal = data_dir / "journal.00000001"
    return data_dir, journal, _record_offsets(journal, JOURNAL_MAGIC)


def test_restart_recovers_the_table_and_says_where_it_is(tmp_path):
    data_dir = tmp_path / "data"
    server = _start(data_dir, "--fsync", "everysec")
    assert f"(data dir {data_dir}, fsync everysec)" in server.log
    with Client(server.node, timeout_s=5.0) as client:
        client.mset({"a": "1", "b": "2", "c": "3"})
        client.delete("b")
        client.incr("hits", 5)
        assert client.cas("a", "1", "one")
        stats = client.stats()["persistence"]
    assert stats["enabled"] is True and stats["fsync"] == "everysec" and stats["data_dir"] == str(data_dir)
    _kill(server)
    restarted = _start(data_dir)
    try:
        assert _table(restarted) == {"a": "one", "c": "3", "hits": "5"}
        assert "loaded 3 keys" in restarted.log
    finally:
        restarted.stop()


def test_in_memory_server_says_so_and_keeps_nothing(start_server):
    server = start_server()
    assert "(in memory)" in server.log
    with Client(server.node, timeout_s=5.0) as client:
        assert client.stats()["persistence"] == {"enabled": False}


def test_ttl_deadlines_survive_and_keys_that_expired_while_down_stay_gone(tmp_path):
    data_dir = tmp_path / "data"
    server = _start(data_dir, "--fsync", "always")
    with Client(server.node, timeout_s=5.0) as client:
        client.set("short", "x", ttl_s=0.5)
        writing_at = time.time()
        client.set("long", "y", ttl_s=100)
        client.set("forever", "z")
        written_at = time.time()
    assert server.stop() == 0
    time.sleep(max(0.0, written_at + 0.7 - time.time()))
    restarted = _start(data_dir)
    try:
        with Client(restarted.node, timeout_s=5.0) as client:
            assert client.get("short") is None
            assert client.get("long") == "y"
            asked_at = time.time()
            ttl = client.ttl("long")
            # What is left of the 100 s when asked: the time the server was down counts, as in Redis.
            assert 100 - (time.time() - writing_at) - 0.01 <= ttl <= 100 - (asked_at - written_at) + 0.01
            assert client.ttl("forever") == -1
    finally:
        restarted.stop()


def test_missing_or_empty_data_files_start_an_empty_table(tmp_path):
    missing = tmp_path / "not" / "yet"
    server = _start(missing)
    try:
        assert _table(server) == {}
    finally:
        server.stop()
    for content in (b"", JOURNAL_MAGIC[:3], JOURNAL_MAGIC):
        data_dir = tmp_path / f"empty{len(content)}"
        data_dir.mkdir()
        (data_dir / "journal.00000001").write_bytes(content)
        server = _start(data_dir, "--fsync", "always")
        try:
            with Client(server.node, timeout_s=5.0) as client:
                assert list(client.keys()) == []
                client.set("k", "v")
            _kill(server)
            again = _start(data_dir)
            assert _table(again) == {"k": "v"}
            again.stop()
        finally:
            server.kill()


def test_torn_tail_at_every_offset_of_the_last_record_loads_every_complete_one(tmp_path):
    source, journal, offsets = _filled_journal(tmp_path, "source")
    last_start, end = offsets[-2], offsets[-1]
    assert end == journal.stat().st_size
    complete = dict(list(PAIRS.items())[:-1])
    for cut in range(last_start + 1, end):
        data_dir = tmp_path / f"cut{cut}"
        shutil.copytree(source, data_dir)
        os.truncate(data_dir / "journal.00000001", cut)
        store = JournaledStore()
        persistence = Persistence(data_dir, FsyncAlways, store)
        report = persistence.open()
        persistence.close()
        assert {k: v for k, v, _ in store.items()} == complete, f"cut at {cut}"
        assert report.warnings and f"torn tail at offset {last_start}" in report.warnings[0]
        assert os.path.getsize(data_dir / "journal.00000001") == last_start  # cut back, ready to append


def test_torn_tail_through_the_real_server_warns_and_keeps_accepting_writes(tmp_path):
    data_dir, journal, offsets = _filled_journal(tmp_path)
    os.truncate(journal, offsets[-2] + 5)
    server = _start(data_dir, "--fsync", "always")
    try:
        assert "torn tail at offset" in server.log and "WARNING" in server.log
        assert _table(server) == dict(list(PAIRS.items())[:-1])
        with Client(server.node, timeout_s=5.0) as client:
            client.set("after", "the tear")
        _kill(server)
        again = _start(data_dir)
        assert _table(again) == {**dict(list(PAIRS.items())[:-1]), "after": "the tear"}
        again.stop()
    finally:
        server.kill()


def test_zero_filled_tail_after_a_power_loss_is_a_torn_tail(tmp_path):
    data_dir = tmp_path / "data"
    _fill(data_dir, PAIRS)
    with open(data_dir / "journal.00000001", "ab") as journal:
        journal.write(bytes(4096))
    server = _start(data_dir)
    try:
        assert _table(server) == PAIRS
        assert "torn tail" in server.log
    finally:
        server.stop()


def test_flipped_byte_in_the_middle_refuses_naming_file_and_offset_then_repair_keeps_the_prefix(tmp_path):
    data_dir, journal, offsets = _filled_journal(tmp_path)
    third = offsets[3]
    data = _flip_byte(journal, third + 14, 0x40)  # inside the third pair's record's payload
    size = len(data)

    refused = run_server("--data-dir", str(data_dir))
    assert refused.returncode == 1
    assert f"{journal}: corrupt at offset {third} (record checksum mismatch)" in refused.stderr
    assert "--repair" in refused.stderr
    assert journal.read_bytes() == data, "a refused start must not touch the files"

    repaired = _start(data_dir, "--repair")
    try:
        assert f"kept {third} bytes, dropped {size - third}" in repaired.log
        assert _table(repaired) == dict(list(PAIRS.items())[:2])
    finally:
        repaired.stop()
    plain = _start(data_dir)
    try:
        assert _table(plain) == dict(list(PAIRS.items())[:2])
    finally:
        plain.stop()


def test_flipped_byte_in_a_record_header_is_corruption_not_a_torn_tail(tmp_path):
    data_dir, journal, offsets = _filled_journal(tmp_path)
    second = offsets[2]
    _flip_byte(journal, second + 2, 0x01)  # the length field: would claim a record past the end
    refused = run_server("--data-dir", str(data_dir))
    assert refused.returncode == 1
    assert f"corrupt at offset {second} (record header checksum mismatch)" in refused.stderr


def test_a_whole_last_record_with_a_bad_checksum_is_judged_by_the_policy_that_wrote_it(tmp_path):
    # Written under always: the record was acknowledged, so a bad checksum is corruption,
    # whatever policy the server is started with now.
    data_dir, journal, offsets = _filled_journal(tmp_path, "always")
    last = offsets[-2]
    data = _flip_byte(journal, last + 14, 0x40)  # inside the last record's payload; its length is intact
    for policy in ("always", "everysec"):
        refused = run_server("--data-dir", str(data_dir), "--fsync", policy)
        assert refused.returncode == 1
        assert f"{journal}: corrupt at offset {last} (record checksum mismatch" in refused.stderr
        assert journal.read_bytes() == data, "a refused start must not touch the files"
    repaired = _start(data_dir, "--repair")
    try:
        assert f"kept {last} bytes, dropped {len(data) - last}" in repaired.log
        assert _table(repaired) == dict(list(PAIRS.items())[:-1])
    finally:
        repaired.stop()
    # Written under everysec: a power loss can leave a whole record with a torn page in it,
    # which was not necessarily on disk when acknowledged; it is a torn tail even under always now.
    data_dir, journal, offsets = _filled_journal(tmp_path, "everysec", "--fsync", "everysec")
    _flip_byte(journal, offsets[-2] + 14, 0x40)
    server = _start(data_dir, "--fsync", "always")
    try:
        assert f"{journal}: torn tail at offset {offsets[-2]}" in server.log
        assert _table(server) == dict(list(PAIRS.items())[:-1])
    finally:
        server.stop()
    # A journal of the 0.1.0 format names no policy: it is judged by the current flag.
    data_dir = tmp_path / "v1"
    data_dir.mkdir()
    records = [frame(msgpack.packb([[key, value, None]])) for key, value in PAIRS.items()]
    last = len(JOURNAL_MAGIC_V1) + sum(map(len, records[:-1]))
    journal = data_dir / "journal.00000001"
    journal.write_bytes(JOURNAL_MAGIC_V1 + b"".join(records))
    _flip_byte(journal, last + 14, 0x40)
    refused = run_server("--data-dir", str(data_dir), "--fsync", "always")
    assert refused.returncode == 1 and f"{journal}: corrupt at offset {last}" in refused.stderr
    server = _start(data_dir, "--fsync", "everysec")
    try:
        assert f"{journal}: torn tail at offset {last}" in server.log
        assert _table(server) == dict(list(PAIRS.items())[:-1])
    finally:
        server.stop()


def test_a_server_started_with_another_policy_writes_its_records_in_a_journal_of_its_own(tmp_path):
    """So that a record acknowledged under always is judged as such, even in a data dir begun under everysec."""
    data_dir = tmp_path / "data"
    _fill(data_dir, dict(list(PAIRS.items())[:3]), "--fsync", "everysec")
    _fill(data_dir, dict(list(PAIRS.items())[3:]), "--fsync", "always")
    journals = sorted(data_dir.glob("journal.*"))
    assert len(journals) == 2
    newest = journals[-1]
    offsets = _record_offsets(newest, JOURNAL_MAGIC)
    _flip_byte(newest, offsets[-2] + 14, 0x40)  # the last write, acknowledged under always
    refused = run_server("--data-dir", str(data_dir), "--fsync", "everysec")
    assert refused.returncode == 1 and f"{newest}: corrupt at offset {offsets[-2]}" in refused.stderr


def test_lock_refuses_a_second_live_server_and_frees_when_it_dies(tmp_path):
    data_dir = tmp_path / "data"
    first = _start(data_dir)
    try:
        refused = run_server("--data-dir", str(data_dir))
        assert refused.returncode == 1
        assert f"data dir {data_dir} is in use by another live server (pid {first.proc.pid})" in refused.stderr
    finally:
        _kill(first)
    second = _start(data_dir)
    second.stop()


def test_compaction_bounds_the_files_and_a_restart_after_it_loads_the_same_table(tmp_path):
    data_dir = tmp_path / "data"
    server = _start(data_dir, "--fsync", "everysec", "--compact-after-bytes", "20000")
    try:
        expected: dict[str, str] = {}
        with Client(server.node, timeout_s=5.0) as client:
            for i in range(3000):
                key, value = f"k{i % 50}", f"value-{i}-" + "x" * 1000
                client.set(key, value, ttl_s=1000 if i % 2 else None)
                expected[key] = value
            deadline = time.monotonic() + 10
            while True:  # idle, and no compaction due: the journal is no larger than the snapshot
                stats = client.stats()["persistence"]
                due = stats["journal_bytes"] > max(20000, stats["snapshot_bytes"])
                if stats["compactions"] >= 2 and not stats["compacting"] and not due:
                    break
                assert time.monotonic() < deadline, stats
                time.sleep(0.1)
        assert stats["compaction_failures"] == 0
        assert stats["last_compaction_pause_ms"] > 0
        names = sorted(os.listdir(data_dir))
        total = sum(os.path.getsize(data_dir / name) for name in names)
        # The writes took over 3 MB of journal. What stays is the table, the
        # replies remembered by request id (a few dozen bytes each, at most
        # 10,000) and the journal since the last snapshot.
        assert total < 3000 * 1000 / 4, f"files not bounded: {total} bytes in {names}"
        assert sum(name.startswith("snapshot.") for name in names) == 1
        assert not any(name.endswith(".tmp") for name in names)
        _kill(server)
        restarted = _start(data_dir)
        try:
            assert _table(restarted) == expected
            with Client(restarted.node, timeout_s=5.0) as client:
                assert 990 < client.ttl("k1") <= 1000 and client.ttl("k0") == -1
        finally:
            restarted.stop()
    finally:
        server.kill()


def test_writes_made_while_the_snapshot_is_copied_in_slices_all_survive(tmp_path):
    """The snapshot is fuzzy (copied between batches); journal replay must make it exact."""
    data_dir = tmp_path / "data"
    server = _start(data_dir, "--fsync", "everysec", "--compact-after-bytes", "4000000")
    try:
        expected: dict[str, str] = {}
        with Client(server.node, timeout_s=10.0) as client:
            for start in range(0, 300_000, 5000):
                batch = {f"key:{i}": f"value-{i}" for i in range(start, start + 5000)}
                client.mset(batch)
                expected.update(batch)
            seen_compacting = 0
            for i in range(3000):
                key = f"key:{(i * 7919) % 300_000}"
                if i % 3 == 0:
                    client.delete(key)
                    expected.pop(key, None)
                else:
                    client.set(key, f"changed-{i}")
                    expected[key] = f"changed-{i}"
                if i % 50 == 0:
                    seen_compacting += client.stats()["persistence"]["compacting"]
            assert seen_compacting, "no compaction ran while the writes were made; the test did not exercise it"
            deadline = time.monotonic() + 60
            while client.stats()["persistence"]["compacting"]:
                client.set("after", "compaction")  # every batch gives the snapshot a slice
                assert time.monotonic() < deadline
            client.set("after", "compaction")
            expected["after"] = "compaction"
            assert client.stats()["persistence"]["compaction_failures"] == 0
        _kill(server)
        restarted = _start(data_dir)
        try:
            with Client(restarted.node, timeout_s=10.0) as client:
                keys = list(expected)
                for start in range(0, len(keys), 5000):
                    chunk = keys[start:start + 5000]
                    assert client.mget(chunk) == [expected[k] for k in chunk]
                assert client.stats()["keys"] == len(expected)
        finally:
            restarted.stop()
    finally:
        server.kill()


def test_flipped_byte_in_a_snapshot_is_refused_and_repair_keeps_the_journal(tmp_path):
    data_dir = tmp_path / "data"
    server = _start(data_dir, "--fsync", "always", "--compact-after-bytes", "2000")
    try:
        with Client(server.node, timeout_s=5.0) as client:
            for i in range(40):  # about 2.5 kB of journal: exactly one compaction
                client.set(f"k{i % 10}", "v" * 40 + str(i))
            deadline = time.monotonic() + 10
            while client.stats()["persistence"]["compactions"] < 1 or client.stats()["persistence"]["compacting"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            client.set("late", "write")
    finally:
        assert server.stop() == 0
    snapshot = next(data_dir.glob("snapshot.*"))
    _flip_byte(snapshot, len(SNAPSHOT_MAGIC) + 20, 0xFF)
    refused = run_server("--data-dir", str(data_dir))
    assert refused.returncode == 1
    assert f"{snapshot}: corrupt at offset {len(SNAPSHOT_MAGIC)}" in refused.stderr
    repaired = _start(data_dir, "--repair")
    try:
        assert "dropped" in repaired.log
        assert _table(repaired).get("late") == "write"
    finally:
        repaired.stop()


def test_a_missing_journal_after_the_snapshot_is_refused_by_name_and_repair_keeps_what_is_before_it(tmp_path):
    data_dir = tmp_path / "data"
    server = _start(data_dir, "--fsync", "always", "--compact-after-bytes", "2000")
    try:
        with Client(server.node, timeout_s=5.0) as client:
            for i in range(40):
                client.set(f"k{i % 10}", "v" * 40 + str(i))
            deadline = time.monotonic() + 10
            while client.stats()["persistence"]["compactions"] < 1 or client.stats()["persistence"]["compacting"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            client.set("late", "write")
            generation = client.stats()["persistence"]["generation"]
    finally:
        assert server.stop() == 0
    # Journal G holds "late"; G+1 is what a compaction that was interrupted leaves. G goes missing.
    missing, later = data_dir / f"journal.{generation:08d}", data_dir / f"journal.{generation + 1:08d}"
    later.write_bytes(JOURNAL_MAGIC)
    (data_dir / f"snapshot.{generation + 1:08d}.tmp").write_bytes(b"half a snapshot")
    missing.unlink()
    files = sorted(os.listdir(data_dir))
    refused = run_server("--data-dir", str(data_dir))
    assert refused.returncode == 1
    assert f"{missing} is missing" in refused.stderr and "--repair" in refused.stderr
    assert sorted(os.listdir(data_dir)) == files, "a refused start must not touch the files"
    repaired = _start(data_dir, "--repair")
    try:
        assert f"{later}: dropped" in repaired.log
        table = _table(repaired)
        assert "late" not in table and set(table) == {f"k{i}" for i in range(10)}
    finally:
        repaired.stop()
    plain = _start(data_dir)
    try:
        assert set(_table(plain)) == {f"k{i}" for i in range(10)}
    finally:
        plain.stop()


def test_gap_in_journal_generations_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "journal.00000003").write_bytes(JOURNAL_MAGIC)
    refused = run_server("--data-dir", str(data_dir))
    assert refused.returncode == 1 and "no snapshot before it" in refused.stderr


def test_unknown_fsync_policy_is_a_usage_error(tmp_path):
    refused = run_server("--data-dir", str(tmp_path), "--fsync", "sometimes")
    assert refused.returncode == 2 and "sometimes" in refused.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs of our own (needs root, as CI has): writes to it run out of space."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_under_always_answers_persistence_error_and_reads_keep_working(small_disk):
    data_dir = small_disk / "data"
    server = _start(data_dir, "--fsync", "always")
    try:
        acknowledged: dict[str, str] = {}
        with Client(server.node, timeout_s=5.0) as client:
            big = "x" * 16 * 1024
            with pytest.raises(PersistenceError) as failure:
                for i in range(100):
                    client.set(f"big{i}", big + str(i))
                    acknowledged[f"big{i}"] = big + str(i)
            failed_key = f"big{len(acknowledged)}"
            assert "not persisted" in str(failure.value)
            assert acknowledged, "the disk was full before anything was written"
            assert client.get(failed_key) is None, "a write that failed must not be visible"
            assert client.get("big0") == acknowledged["big0"]
            assert client.mget(list(acknowledged)) == list(acknowledged.values())
            with pytest.raises(PersistenceError):
                client.mset({"another": big, "big0": "overwritten"})
            assert client.get("another") is None and client.get("big0") == acknowledged["big0"]
            stats = client.stats()["persistence"]
            assert stats["failed_batches"] >= 2 and stats["write_errors"] >= 2
            # Nothing stays broken: a record that still fits is accepted.
            client.set("small", "fits")
            acknowledged["small"] = "fits"
        _kill(server)
        restarted = _start(data_dir)
        try:
            assert _table(restarted) == acknowledged
        finally:
            restarted.stop()
    finally:
        server.kill()


def test_leftovers_of_an_interrupted_compaction_are_ignored_and_removed(tmp_path):
    data_dir = tmp_path / "data"
    _fill(data_dir, PAIRS)
    journal = data_dir / "journal.00000001"
    # As if a compaction to generation 2 finished its snapshot but died before deleting
    # generation 1, while a later one (3) had only begun its temp file.
    store = JournaledStore()
    persistence = Persistence(data_dir, FsyncAlways, store)
    persistence.open()
    persistence.compaction.write_now()
    persistence.close()
    journal.write_bytes(JOURNAL_MAGIC + b"garbage that must never be read")
    (data_dir / "snapshot.00000003.tmp").write_bytes(b"half a snapshot")
    server = _start(data_dir, "--fsync", "always")
    try:
        assert _table(server) == PAIRS
        assert sorted(os.listdir(data_dir)) == ["journal.00000002", "lock", "snapshot.00000002"]
    finally:
        server.stop()


@TABLES
def test_loading_saved_entries_gives_the_same_table_as_applying_them_one_by_one(table):
    import random

    rng = random.Random(7)
    now = time.time()
    grace_s = 60.0
    entries: list[tuple[str, str | None, tuple[int, int, str] | None, float | None]] = []
    for n in range(5000):
        key = f"k{rng.randrange(300)}"
        version = (int((now - rng.uniform(0, 2 * grace_s)) * 1000), n, rng.choice("ab"))
        roll = rng.random()
        if roll < 0.1:
            entries.append((key, None, None, None))  # removed (evicted): nothing left
        elif roll < 0.2:
            entries.append((key, None, version, None))  # deleted: a tombstone, unless past its grace
        else:
            deadline = None if roll < 0.6 else now + rng.uniform(-10, 10)
            entries.append((key, "v" * rng.randrange(50) + key, version, deadline))
    loaded = table(tombstone_grace_s=grace_s)
    loaded.load(iter(entries), now)
    applied = table(tombstone_grace_s=grace_s)
    for key, value, saved, deadline in entries:
        applied.evict(key)
        applied._unbury(key)
        if value is not None and (deadline is None or deadline > now):
            applied.put(key, value, deadline, saved)
        elif value is None and saved is not None and saved[0] > (now - grace_s) * 1000:
            applied._bury(key, saved)
    assert sorted(loaded.records(), key=repr) == sorted(applied.records(), key=repr)
    assert loaded.tombstones == applied.tombstones > 0
    assert len(loaded) == len(applied)
    if table is Store:  # an estimate, summed by load at the end
        assert loaded.memory_bytes == applied.memory_bytes
    else:  # what the allocator holds, which depends a little on the order of allocations
        assert abs(loaded.memory_bytes - applied.memory_bytes) < 0.05 * applied.memory_bytes
    assert loaded.keys_with_ttl == sum(d is not None for _, _, d in applied.items())
    newest = max(saved for _, _, saved, _ in entries if saved is not None)
    assert loaded.hlc.issue() > newest  # the clock moved past everything loaded


def test_failed_fsync_under_always_refuses_writes_until_restart_and_reads_keep_working(tmp_path, monkeypatch):
    """A real server loop in this process, whose fdatasync fails as a dying disk's does (EIO).

    A failing fsync cannot be produced on demand without special devices, so
    here os.fdatasync is replaced; everything else (journal, loop, sockets,
    client) is real.
    """
    import errno
    import threading

    from server.app import build_server
    from server.config import ServerConfig

    app = build_server(ServerConfig(port=0, data_dir=str(tmp_path), fsync="always"))
    node = app.server.endpoint.replace("tcp://", "")
    loop = threading.Thread(target=app.server.serve_forever, daemon=True)
    loop.start()
    try:
        with Client(node, timeout_s=5.0) as client:
            client.set("kept", "1")

            def dying_disk(fd: int) -> None:
                raise OSError(errno.EIO, "Input/output error")

            monkeypatch.setattr(os, "fdatasync", dying_disk)
            with pytest.raises(PersistenceError, match="Input/output error"):
                client.set("lost", "2")
            monkeypatch.undo()
            assert client.get("lost") is None
            assert client.get("kept") == "1"
            with pytest.raises(PersistenceError, match="restart the server"):
                client.incr("kept")  # the disk's state is unknown now: no more acknowledgements
            assert client.get("kept") == "1"
            stats = client.stats()["persistence"]
            assert "fsync of the journal failed" in stats["broken"] and stats["failed_batches"] == 2
    finally:
        app.server.stop()
        loop.join(5)
        app.close()
    restarted = _start(tmp_path)
    try:
        assert _table(restarted) == {"kept": "1"}
    finally:
        restarted.stop()
