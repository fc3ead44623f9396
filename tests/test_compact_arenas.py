"""The compact table's arenas (server/_cstore.pyx): churn compacts them, keys keep their values, memory is bounded.

Small arenas (4 KiB, so values over 508 bytes take a block of their own)
make compaction frequent; the table is used only through its interface.
"""

from __future__ import annotations

import random

import pytest

from server._cstore import GARBAGE_SHARE, CompactStore
from tests.tables import TABLES

ARENA_BYTES = 4096
ENTRY_HEADER_BYTES = 4


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _entry_bytes(key: str, value: str | None) -> int:
    return ENTRY_HEADER_BYTES + len(key.encode()) + len((value or "").encode())


def test_churn_compacts_arenas_and_every_key_keeps_its_value() -> None:
    clock = Clock()
    store = CompactStore(clock=clock, tombstone_grace_s=5, arena_bytes=ARENA_BYTES)
    model: dict[str, tuple[str, float | None]] = {}
    buried: dict[str, float] = {}  # key -> when its tombstone was left
    rng = random.Random(11)
    for _ in range(60_000):
        key = f"key:{rng.randrange(1500)}"
        action = rng.random()
        if action < 0.6:  # values of other lengths move the key to a new entry; 600 and 2000 take blocks
            value = "é" * rng.choice([0, 1, 7, 30, 120]) + "v" * rng.choice([0, 5, 50, 600, 2000])
            ttl = rng.choice([None, None, 3.0])
            store.set(key, value, ttl)
            model[key] = (value, None if ttl is None else clock.now + ttl)
            buried.pop(key, None)
        elif action < 0.8:
            store.delete(key)
            if model.pop(key, None) is not None:
                buried[key] = clock.now
        elif action < 0.99:
            store.evict(key)
            model.pop(key, None)
        else:
            clock.now += 1
            store.sweep(limit=10_000)
        model = {k: (v, d) for k, (v, d) in model.items() if d is None or d > clock.now}
        buried = {k: when for k, when in buried.items() if when + 5 >= clock.now}
    assert store.compactions > 100
    assert len(store) == len(model)
    assert {key: store.get(key) for key in model} == {key: value for key, (value, _) in model.items()}
    assert {key: value for key, value, _ in store.items()} == {key: value for key, (value, _) in model.items()}
    for key, (_, deadline) in model.items():
        assert store.deadline(key) == deadline
    store.sweep(limit=10_000)
    held = {key: store.tombstone(key) for key in buried}
    assert None not in held.values()
    # What compaction promises: besides the current arena, the arenas hold their live entries
    # and at most a GARBAGE_SHARE-th more, each filled to at least 7/8 (a larger entry takes a block).
    records = [(key, value) for key, (value, _) in model.items()] + [(key, None) for key in held]
    live_bytes = sum(size for size in (_entry_bytes(key, value) for key, value in records) if size <= ARENA_BYTES // 8)
    assert (store.arenas_held - 1) * ARENA_BYTES * 7 / 8 <= live_bytes * (1 + 1 / GARBAGE_SHARE)


def test_an_arena_left_without_live_entries_is_freed() -> None:
    store = CompactStore(arena_bytes=ARENA_BYTES)
    for i in range(2000):  # 32 bytes an entry: 128 a 4 KiB arena, 16 arenas filled in key order
        store.set(f"key:{i:04d}", "v" * 20)
    assert store.arenas_held == 16
    for i in range(128):  # the first arena's: too little garbage to compact, the emptied arena is freed
        store.evict(f"key:{i:04d}")
    assert store.arenas_held == 15 and store.compactions == 0
    assert [store.get(f"key:{i:04d}") for i in range(128, 2000)] == ["v" * 20] * 1872
    for i in range(128, 2000):
        store.evict(f"key:{i:04d}")
    assert store.arenas_held == 0 and store.memory_bytes == 0


@TABLES
def test_what_the_memory_cap_counts_falls_with_each_key_that_goes(table) -> None:
    # The cap's eviction loop (server/memory.py) evicts until memory_bytes + slack_bytes fits.
    store = table()
    for i in range(3000):
        store.set(f"key:{i}", "v" * (i % 300))
    counted = store.memory_bytes + store.slack_bytes
    for i in range(0, 3000, 7):
        store.evict(f"key:{i}")
        now_counted = store.memory_bytes + store.slack_bytes
        assert now_counted < counted, i
        counted = now_counted


def test_an_arena_size_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="arena"):
        CompactStore(arena_bytes=16)
