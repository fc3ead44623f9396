"""A journaled table collects a batch's changes and undoes them, on both tables (no server needed)."""

from __future__ import annotations

from server.journaled_store import Journaled
from tests.tables import JOURNALED_TABLES


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@JOURNALED_TABLES
def test_a_batch_undone_leaves_every_key_as_it_was(journaled: type[Journaled]) -> None:
    clock = Clock()
    store = journaled(clock=clock)
    store.set("kept", "1")
    store.set("changed", "old", ttl_s=100)
    store.set("deleted", "x")
    store.set("evicted", "y")
    store.delete("buried")  # missing: no tombstone
    store.set("buried", "z")
    store.delete("buried")
    before = sorted(store.records(), key=repr)
    store.recording = True
    store.set("changed", "new")
    store.delete("deleted")
    store.evict("evicted")
    store.set("buried", "back")
    store.incr("counter", 5)
    assert [change[:2] for change in store.changes] == [
        ("changed", "new"), ("deleted", None), ("evicted", None), ("buried", "back"), ("counter", "5")]
    assert store.changes[2][2] is None  # evicted: nothing left, no tombstone
    store.undo_batch()
    assert sorted(store.records(), key=repr) == before
    assert store.changes == [] and store.deadline("changed") == 1_000_100.0
    assert (len(store), store.tombstones) == (4, 1)
