"""Snapshot and journal payloads in bulk (``Store.load_payloads``, ``Store.snapshot_payloads``).

The compact table packs its snapshot from its records and reads payloads
straight from their bytes (server/_cstore.pyx); these tests hold it to
msgpack's bytes and to :meth:`~server.store.Store.load`'s result, on valid,
unusually encoded and hostile payloads, and a real server to its table
after a compaction and a restart on both cores.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client import Client
from server._cstore import CompactStore
from server.journal import FsyncAlways, journal_start
from server.persistence import Persistence
from server.records import frame
from server.store import Store
from tests.servers import ServerProcess, run_server, runs_compiled_core
from tests.tables import JOURNALED_TABLES, TABLES
from tests.test_versions import Peer, _all_records

NOW = 1_800_000_000.0
GRACE_S = 60.0
NOW_MS = int(NOW * 1000)

Entry = tuple[str, str | None, tuple[int, int, str] | None, float | None]

KEYS = st.one_of(st.sampled_from(["", "a", "key:000000000001", "é", "ключ", "🙂", "k" * 31, "k" * 32, "k" * 255,
                                  "k" * 256]), st.text(max_size=12))
#: Lengths on both sides of each str header's bound (fixstr, str 8, str 16, str 32).
VALUES = st.one_of(st.text(max_size=12), st.sampled_from([0, 31, 32, 255, 256, 65535, 65536]).map(lambda n: "v" * n))
NODES = st.sampled_from(["", "node-a", "node-b", "nœud", "n" * 40])
#: Around the tombstones' grace (kept or collected), and the extremes of an int64 and a 16-bit counter.
VERSIONS = st.tuples(st.one_of(st.integers(NOW_MS - 2 * int(GRACE_S * 1000), NOW_MS + 1000),
                               st.integers(-2**63, 2**63 - 1)),
                     st.integers(0, 65535), NODES)
#: Past (expired), future, whole seconds (float 32 can hold them), and none.
DEADLINES = st.one_of(st.none(), st.floats(NOW - 100, NOW + 100), st.integers(-3, 3).map(lambda n: NOW + 128 * n))


@st.composite
def _entries(draw: st.DrawFn) -> list[Entry]:
    """Saved entries as a journal holds them: values, tombstones (old and new), removals, deadlines."""
    entries: list[Entry] = []
    for _ in range(draw(st.integers(0, 40))):
        key = draw(KEYS)
        kind = draw(st.sampled_from(["value", "value", "unversioned", "tombstone", "removed"]))
        if kind == "tombstone":
            entries.append((key, None, draw(VERSIONS), None))
        elif kind == "removed":
            entries.append((key, None, None, None))
        else:
            entries.append((key, draw(VALUES), None if kind == "unversioned" else draw(VERSIONS), draw(DEADLINES)))
    return entries


def _payloads(entries: list[Entry], per_payload: int) -> tuple[list[bytes], list[Any]]:
    """The entries in payloads ``[entries, replies]`` as a journal writes them, and the replies they hold."""
    payloads, replies = [], []
    for start in range(0, max(len(entries), 1), per_payload):
        remembered = [(("set", f"rid-{start}"), b"\x92\x00\xc3")]
        replies += remembered
        payloads.append(msgpack.packb((entries[start:start + per_payload], remembered)))
    return payloads, replies


def _same_tables(loaded: Store, expected: Store, keys: list[str]) -> None:
    assert sorted(loaded.records(), key=repr) == sorted(expected.records(), key=repr)
    assert (len(loaded), loaded.tombstones, loaded.keys_with_ttl) == (
        len(expected), expected.tombstones, expected.keys_with_ttl)
    for key in keys:
        assert (loaded.get(key), loaded.tombstone(key), loaded.deadline(key)) == (
            expected.get(key), expected.tombstone(key), expected.deadline(key))


def _table(table: Callable[..., Store]) -> Store:
    return table(clock=lambda: NOW, tombstone_grace_s=GRACE_S)


# -- loading ------------------------------------------------------------------------------------


@TABLES
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=_entries(), per_payload=st.integers(1, 20))
def test_loading_payloads_gives_the_table_loading_their_entries_gives(table, entries, per_payload) -> None:
    payloads, replies = _payloads(entries, per_payload)
    loaded, expected = _table(table), _table(table)
    got_replies: list[Any] = []
    loaded.load_payloads(payloads, NOW, got_replies.extend)
    expected.load(entries, NOW)
    _same_tables(loaded, expected, [key for key, *_ in entries])
    assert got_replies == replies
    versions = [version for _, _, version, _ in entries if version is not None]
    if versions:
        assert loaded.hlc.issue() > max(versions)  # the clock moved past everything loaded


def test_ascii_keys_read_from_bytes_are_found_by_their_str() -> None:
    # An ASCII key read from a payload is hashed from its bytes (_Py_HashBytes), the table's other
    # operations hash the str: a key loaded under another hash would not be found (nor replaced).
    keys = ["", *map(chr, range(128)), *("k" * n for n in range(2, 80)), "key:000000000042", "é", "ключ"]
    table = _table(CompactStore)
    table.load_payloads([msgpack.packb(([(key, f"v{key}", (1, 0, "n"), None) for key in keys], ()))], NOW,
                        lambda replies: None)
    assert all(table.get(key) == f"v{key}" for key in keys)
    for key in keys:
        table.set(key, "again")
    assert len(table) == len(keys)


def _loose(value: object, rng: random.Random) -> bytes:
    """``value`` in msgpack, each str, int, float and array in any encoding that holds it, not only the shortest."""
    if value is None or isinstance(value, bytes):
        return msgpack.packb(value)
    if isinstance(value, str):
        data = value.encode()
        size = len(data)
        heads = ([bytes([0xA0 | size])] if size < 32 else []) + [
            bytes([head]) + size.to_bytes(width, "big")
            for head, width in ((0xD9, 1), (0xDA, 2), (0xDB, 4)) if size < 1 << (8 * width)]
        return rng.choice(heads) + data
    if isinstance(value, int):
        ints = [bytes([value & 0xFF])] if -32 <= value < 128 else []
        for head, width, signed in ((0xCC, 1, False), (0xCD, 2, False), (0xCE, 4, False), (0xCF, 8, False),
                                    (0xD0, 1, True), (0xD1, 2, True), (0xD2, 4, True), (0xD3, 8, True)):
            try:
                ints.append(bytes([head]) + value.to_bytes(width, "big", signed=signed))
            except OverflowError:
                pass
        return rng.choice(ints)
    if isinstance(value, float):
        floats = [b"\xcb" + struct.pack(">d", value)]
        if struct.unpack(">f", struct.pack(">f", value))[0] == value:
            floats.append(b"\xca" + struct.pack(">f", value))
        if value.is_integer():
            floats.append(_loose(int(value), rng))
        return rng.choice(floats)
    assert isinstance(value, (list, tuple))
    size = len(value)
    heads = ([bytes([0x90 | size])] if size < 16 else []) + [b"\xdc" + size.to_bytes(2, "big"),
                                                              b"\xdd" + size.to_bytes(4, "big")]
    return rng.choice(heads) + b"".join(_loose(item, rng) for item in value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=_entries(), seed=st.integers(0, 2**32))
def test_every_encoding_msgpack_allows_for_a_field_loads_as_msgpack_decodes_it(entries, seed) -> None:
    # Another writer (or a later msgpack) may pick str 8 for a short str, array 16 for a short array, an int
    # for a float deadline, a float 32...: the table reads them all as msgpack does.
    payload = _loose((entries, [(("set", "rid"), b"reply")]), random.Random(seed))
    loaded, expected = _table(CompactStore), _table(CompactStore)
    got_replies: list[Any] = []
    loaded.load_payloads([payload], NOW, got_replies.extend)
    decoded, replies = msgpack.unpackb(payload, raw=False, use_list=False)
    expected.load(decoded, NOW)
    _same_tables(loaded, expected, [key for key, *_ in entries])
    assert got_replies == list(replies)


# -- hostile payloads -----------------------------------------------------------------------------


def _sample_payload() -> bytes:
    entries = [("key", "value", (NOW_MS, 1, "node-a"), None), ("ключ", "é" * 200, (NOW_MS, 2, "nœud"), NOW + 50),
               ("gone", None, (NOW_MS, 3, "node-a"), None), ("evicted", None, None, None),
               ("old", "v", None, NOW - 1), ("", "", (2**40, 65535, "n" * 40), NOW + 1.5)]
    return msgpack.packb((entries, [(("set", "rid"), b"reply")]))


def _still_works(table: Store) -> None:
    """The table holds together: every record it reports is found by its key, and it takes new writes."""
    for key, value, _, _ in list(table.records()):
        assert table.get(key) == value
    table.set("after", "x")
    assert table.get("after") == "x"


def test_a_payload_cut_short_anywhere_is_refused_with_value_error() -> None:
    payload = _sample_payload()
    for end in range(len(payload)):
        table = _table(CompactStore)
        with pytest.raises(ValueError):
            table.load_payloads([payload[:end]], NOW, lambda replies: None)
        _still_works(table)


BAD_UTF8 = b"\xed\xa0\x80"  # a surrogate, which strict UTF-8 (msgpack's) refuses

HOSTILE = {
    "a map": msgpack.packb({"entries": []}),
    "one element": msgpack.packb(([],)),
    "entries not an array": msgpack.packb(("entries", ())),
    "an entry not an array": msgpack.packb((["key"], ())),
    "an entry of 3": msgpack.packb(([("k", "v", None)], ())),
    "an entry of 5": msgpack.packb(([("k", "v", None, None, None)], ())),
    "an int key": msgpack.packb(([(1, "v", None, None)], ())),
    "a bin key": msgpack.packb(([(b"k", "v", None, None)], ())),
    "a nil key": msgpack.packb(([(None, "v", None, None)], ())),
    "an int value": msgpack.packb(([("k", 7, None, None)], ())),
    "a bin value": msgpack.packb(([("k", b"v", None, None)], ())),
    "a version of 2": msgpack.packb(([("k", "v", (1, 2), None)], ())),
    "a version of 4": msgpack.packb(([("k", "v", (1, 2, "n", 4), None)], ())),
    "a counter beyond 16 bits": msgpack.packb(([("k", "v", (1, 65536, "n"), None)], ())),
    "a negative counter": msgpack.packb(([("k", "v", (1, -1, "n"), None)], ())),
    "ms beyond int64": msgpack.packb(([("k", "v", (2**64 - 1, 0, "n"), None)], ())),
    "a float ms": msgpack.packb(([("k", "v", (1.5, 0, "n"), None)], ())),
    "an int node": msgpack.packb(([("k", "v", (1, 0, 3), None)], ())),
    "a str deadline": msgpack.packb(([("k", "v", None, "soon")], ())),
    "a bool deadline": msgpack.packb(([("k", "v", None, True)], ())),
    "a key not UTF-8": b"\x92\x91\x94\xa3" + BAD_UTF8 + b"\xa1v\xc0\xc0\x90",
    "a value not UTF-8": b"\x92\x91\x94\xa1k\xa3" + BAD_UTF8 + b"\xc0\xc0\x90",
    "a node not UTF-8": b"\x92\x91\x94\xa1k\xa1v\x93\x01\x00\xa3" + BAD_UTF8 + b"\xc0\x90",
    "4 G entries": b"\x92\xdd\xff\xff\xff\xff",
    "a key of 4 GiB": b"\x92\x91\x94\xdb\xff\xff\xff\xffk",
    "a value of 4 GiB": b"\x92\x91\x94\xa1k\xdb\xff\xff\xff\xffv",
    "bytes after the replies": msgpack.packb(([], ())) + b"\x00",
    "replies that do not decode": b"\x92\x90\xc1",
    "empty": b"",
}


@pytest.mark.parametrize("payload", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_payload_of_another_shape_is_refused_with_value_error(payload) -> None:
    table = _table(CompactStore)
    table.set("before", "kept")
    with pytest.raises(ValueError):
        table.load_payloads([payload], NOW, lambda replies: None)
    assert table.get("before") == "kept"
    _still_works(table)


@settings(max_examples=400, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4))
def test_a_payload_with_flipped_bytes_loads_as_msgpack_decodes_it_or_is_refused(flips) -> None:
    damaged = bytearray(_sample_payload())
    for offset, mask in flips:
        damaged[offset % len(damaged)] ^= mask
    table = _table(CompactStore)
    try:
        table.load_payloads([bytes(damaged)], NOW, lambda replies: None)
    except ValueError:
        _still_works(table)
        return
    # Read whole: then msgpack decodes it too, to the same entries.
    expected = _table(CompactStore)
    expected.load(msgpack.unpackb(bytes(damaged), raw=False, use_list=False)[0], NOW)
    assert sorted(table.records(), key=repr) == sorted(expected.records(), key=repr)
    _still_works(table)


# -- saving ---------------------------------------------------------------------------------------


@st.composite
def _filled(draw: st.DrawFn) -> Store:
    """A compact table after random writes: values, tombstones, evictions, deadlines past and future."""
    table = _table(CompactStore)
    for _ in range(draw(st.integers(0, 60))):
        key = draw(KEYS)
        kind = draw(st.sampled_from(["put", "put", "put", "delete", "evict"]))
        if kind == "put":
            deadline = draw(DEADLINES)
            table.put(key, draw(VALUES), None if deadline is None else float(deadline), draw(VERSIONS))
        elif kind == "delete":
            table._bury(key, draw(VERSIONS))
        else:
            table.evict(key)
    return table


def _packed_by_msgpack(table: Store, per_payload: int) -> list[bytes]:
    records = list(table.records())
    return [msgpack.packb((records[start:start + per_payload], ())) for start in range(0, len(records), per_payload)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=_filled(), per_payload=st.integers(1, 40))
def test_the_compact_table_packs_its_snapshot_byte_for_byte_as_msgpack(table, per_payload) -> None:
    assert list(table.snapshot_payloads(per_payload)) == _packed_by_msgpack(table, per_payload)


def test_a_payload_of_more_than_65535_entries_and_a_value_of_4_mib_pack_as_msgpack() -> None:
    # array 32 and str 32, which random tables do not reach
    table = _table(CompactStore)
    for i in range(70_000):
        table.put(f"k{i}", "", None, (i, i % 65536, "node"))
    table.put("large", "x" * (4 << 20), NOW + 10.25, (2**62, 1, "node"))
    assert list(table.snapshot_payloads(100_000)) == _packed_by_msgpack(table, 100_000)


@TABLES
def test_a_snapshot_packed_by_either_table_loads_into_either(table) -> None:
    source = _table(table)
    rng = random.Random(3)
    for i in range(3000):
        key = f"k{rng.randrange(1000)}" + ("é" if i % 7 == 0 else "")
        if rng.random() < 0.2:
            source._bury(key, (NOW_MS - rng.randrange(int(GRACE_S * 1000)), i % 65536, rng.choice("ab")))
        else:
            source.put(key, f"v{i}", rng.choice([None, NOW + 5.5, NOW - 1.0]), (NOW_MS, i % 65536, "a"))
    payloads = list(source.snapshot_payloads(512))
    for target in (Store, CompactStore):
        loaded = _table(target)
        loaded.load_payloads(payloads, NOW, lambda replies: None)
        assert sorted(loaded.records(), key=repr) == sorted(source.records(), key=repr)


def test_snapshot_payloads_taken_while_the_table_changes_hold_every_key_held_throughout() -> None:
    # The snapshot is written in slices between batches: records by number, as records() iterates.
    table = _table(CompactStore)
    for i in range(2000):
        table.set(f"k{i}", "v")
    seen: list[str] = []
    deleted: set[str] = set()
    for n, payload in enumerate(table.snapshot_payloads(100)):
        seen += [entry[0] for entry in msgpack.unpackb(payload)[0]]
        for i in range(20 if n < 10 else 0):  # writes between slices: new keys, deletes, keys set again
            table.set(f"new{n}-{i}", "v")
            deleted.add(f"k{(n * 20 + i) * 7 % 2000}")
            table.delete(f"k{(n * 20 + i) * 7 % 2000}")
            table.set(f"k{(n * 20 + i) * 13 % 2000}", "again")
    assert {f"k{i}" for i in range(2000)} - deleted <= set(seen)
    assert len(seen) == len(set(seen))  # each record once


# -- a real server ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pure", ["0", "1"], ids=["compiled", "pure-python"])
def test_a_server_restarted_after_a_compaction_holds_every_key_and_tombstone(tmp_path: Path, pure: str) -> None:
    data_dir = tmp_path / "data"
    env = {"MEMLOOKUP_PURE_PYTHON": pure}
    args = ["--data-dir", str(data_dir), "--fsync", "everysec", "--node-name", "node-a"]
    server = ServerProcess([*args, "--compact-after-bytes", "200000"], env=env)
    try:
        with Client(server.node, timeout_s=10.0) as client:
            for start in range(0, 20_000, 5000):
                client.mset({f"key:{i:012d}": f"value:{i:026d}" for i in range(start, start + 5000)})
            client.mset({"": "empty key", "é": "", "ключ": "значение", "🙂": "x" * 70_000})
            client.set("ttl", "v", ttl_s=1000)
            for i in range(0, 20_000, 7):
                client.delete(f"key:{i:012d}")  # tombstones
            deadline = time.monotonic() + 60
            while True:
                stats = client.stats()["persistence"]
                if stats["compactions"] >= 1 and not stats["compacting"]:
                    break
                assert time.monotonic() < deadline, stats
                client.set("tick", str(time.monotonic()))  # every batch gives the snapshot a slice
            client.set("after the snapshot", "in the journal")
            client.delete("ключ")
        peer = Peer(server.node)
        before = sorted(map(repr, _all_records(peer)))
        peer.close()
    finally:
        assert server.stop() == 0
    assert any(name.startswith("snapshot.") for name in (p.name for p in data_dir.iterdir()))
    restarted = ServerProcess(args, env=env)
    try:
        assert runs_compiled_core(restarted.log) == (pure == "0")
        peer = Peer(restarted.node)
        assert sorted(map(repr, _all_records(peer))) == before
        assert sum("None, [" in record for record in before) > 2800  # the tombstones are among them
        peer.close()
    finally:
        restarted.stop()


@pytest.mark.parametrize("pure", ["0", "1"], ids=["compiled", "pure-python"])
def test_a_journal_record_of_another_shape_with_a_valid_checksum_is_refused_at_start(
        tmp_path: Path, pure: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    journal = data_dir / "journal.00000001"
    good = msgpack.packb(([("key", "value", (NOW_MS, 0, "node-a"), None)], ()))
    written = journal_start("everysec") + frame(good) + frame(HOSTILE["an entry of 3"])
    journal.write_bytes(written)
    monkeypatch.setenv("MEMLOOKUP_PURE_PYTHON", pure)
    refused = run_server("--data-dir", str(data_dir), "--fsync", "everysec")
    assert refused.returncode == 1
    assert f"{journal}: a record with a valid checksum does not decode" in refused.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == ["journal.00000001", "lock"]
    assert journal.read_bytes() == written, "a refused start must not touch the files"


@TABLES
def test_a_snapshot_refuses_a_lone_surrogate_as_msgpack_does(table) -> None:
    # The table holds any str (surrogatepass); the snapshot's format, UTF-8, cannot: packing it must fail,
    # never write bytes that no restart could decode.
    for held in ({"\ud800key": "v"}, {"key": "value\udfff"}):
        store = _table(table)
        store.set("plain", "v")
        for key, value in held.items():
            store.set(key, value)
        with pytest.raises(ValueError):
            list(store.snapshot_payloads(512))


@JOURNALED_TABLES
def test_a_compaction_that_cannot_pack_the_table_fails_and_keeps_the_files(tmp_path: Path, journaled) -> None:
    store = journaled()
    persistence = Persistence(tmp_path, FsyncAlways, store, compact_after_bytes=1)
    persistence.open()
    try:
        store.put("plain", "v", None)
        store.put("\ud800", "v", None)
        for _ in range(5):  # a failed slice, then more housekeeping ticks
            persistence.compaction.periodic()
        persistence.compaction.close()
        assert persistence.compaction.failures == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.00000001", "journal.00000002", "lock"]
    finally:
        persistence.close()
