"""The store against a plain dict model, driven by hypothesis, with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from server._cstore import CompactStore
from server.store import INT64_MAX, NotAnInteger, Store
from tests.tables import TABLES

KEYS = st.sampled_from(["a", "b", "c", "ü", "", "key with space"])
VALUES = st.one_of(st.sampled_from(["", "1", "-7", "x", "9223372036854775807"]), st.text(max_size=8))
TTLS = st.one_of(st.none(), st.floats(min_value=0.5, max_value=10, allow_nan=False))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class StoreModel(RuleBasedStateMachine):
    """The model: key -> (value, deadline or None); a key past its deadline is absent."""

    table: type[Store] = Store

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.store = self.table(clock=self.clock)
        self.model: dict[str, tuple[str, float | None]] = {}

    def live(self) -> dict[str, str]:
        return {k: v for k, (v, d) in self.model.items() if d is None or d > self.clock.now}

    def deadline(self, ttl: float | None) -> float | None:
        return None if ttl is None else self.clock.now + ttl

    @rule(key=KEYS, value=VALUES, ttl=TTLS, condition=st.sampled_from(["", "nx", "xx"]))
    def set(self, key, value, ttl, condition):
        present = key in self.live()
        stored = self.store.set(key, value, ttl, nx=condition == "nx", xx=condition == "xx")
        expected = not ((condition == "nx" and present) or (condition == "xx" and not present))
        assert stored == expected
        if stored:
            self.model[key] = (value, self.deadline(ttl))

    @rule(key=KEYS)
    def get(self, key):
        assert self.store.get(key) == self.live().get(key)

    @rule(key=KEYS)
    def delete(self, key):
        assert self.store.delete(key) == (key in self.live())
        self.model.pop(key, None)

    @rule(key=KEYS, delta=st.integers(min_value=-(2**62), max_value=2**62))
    def incr(self, key, delta):
        current = self.live().get(key)
        try:
            result = self.store.incr(key, delta)
        except NotAnInteger:
            valid = current is None or (current.lstrip("-").isdigit() and current.isascii())
            assert not valid or abs(int(current or 0) + delta) > INT64_MAX
            return
        base = 0 if current is None else int(current)
        assert result == base + delta
        old_deadline = self.model.get(key, ("", None))[1] if current is not None else None
        self.model[key] = (str(result), old_deadline)

    @rule(key=KEYS, expected=VALUES, value=VALUES, ttl=TTLS)
    def cas(self, key, expected, value, ttl):
        swapped = self.store.cas(key, expected, value, ttl)
        assert swapped == (self.live().get(key) == expected)
        if swapped:
            self.model[key] = (value, self.deadline(ttl))

    @rule(seconds=st.floats(min_value=0, max_value=5))
    def advance_clock(self, seconds):
        self.clock.now += seconds

    @rule()
    def sweep(self):
        self.store.sweep()

    @precondition(lambda self: True)
    @rule(key=KEYS)
    def ttl(self, key):
        live = self.live()
        if key not in live:
            assert self.store.ttl(key) == -2
        elif self.model[key][1] is None:
            assert self.store.ttl(key) == -1
        else:
            deadline = self.model[key][1]
            assert deadline is not None
            assert self.store.ttl(key) == pytest.approx(deadline - self.clock.now)

    @invariant()
    def scan_returns_exactly_the_live_keys(self):
        seen: list[str] = []
        cursor = 0
        while True:
            cursor, page = self.store.scan(cursor, "*", 2)
            seen += page
            if cursor == 0:
                break
        assert sorted(seen) == sorted(self.live())

    @invariant()
    def items_match(self):
        live = self.live()
        assert {k: v for k, v, _ in self.store.items()} == live


def small_arenas_table(clock: Clock) -> CompactStore:
    """The compact table with arenas of 64 bytes: entries over 8 bytes take blocks, the rest compact often."""
    return CompactStore(clock=clock, arena_bytes=64)


class CompactStoreModel(StoreModel):
    table = staticmethod(small_arenas_table)  # type: ignore[assignment]


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestCompactStoreModel = CompactStoreModel.TestCase
TestCompactStoreModel.settings = settings(TestStoreModel.settings, stateful_step_count=80)  # to compact


@TABLES
def test_sweep_removes_expired_keys_nobody_reads(table: type[Store]) -> None:
    clock = Clock()
    store = table(clock=clock)
    for i in range(100):
        store.set(f"k{i}", "v", ttl_s=1)
    store.set("forever", "v")
    clock.now += 2
    assert store.sweep(limit=1000) == 100
    assert len(store) == 1
    assert store.memory_bytes > 0


@TABLES
def test_memory_estimate_returns_to_zero_once_the_tombstone_is_collected(table: type[Store]) -> None:
    clock = Clock()
    store = table(clock=clock, tombstone_grace_s=60)
    store.set("k", "v" * 1000)
    store.set("k", "v")
    store.delete("k")
    assert len(store) == 0 and store.tombstones == 1 and store.memory_bytes > 0
    clock.now += 61
    store.sweep()
    assert store.memory_bytes == 0 and store.tombstones == 0


@TABLES
def test_scan_with_pattern_and_small_pages_finds_each_key_once(table: type[Store]) -> None:
    store = table()
    for i in range(5000):
        store.set(f"user:{i}", "x")
        store.set(f"item:{i}", "x")
    seen: list[str] = []
    cursor = 0
    while True:
        cursor, page = store.scan(cursor, "user:*", 100)
        seen += page
        if cursor == 0:
            break
    assert len(seen) == len(set(seen)) == 5000
