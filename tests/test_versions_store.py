"""The hybrid logical clock and write-if-newer in the store, with a fake wall clock (no server needed).

A fake clock is the only way to hold the wall clock still for 65,536 writes or
to turn it back; the same behaviour over a real server is in tests/test_versions.py.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from common.versions import MAX_COUNTER
from server.clock import HybridLogicalClock
from server.store import Store
from tests.tables import TABLES


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_versions_only_grow_when_the_wall_clock_stands_still_or_goes_back():
    wall = Clock()
    clock = HybridLogicalClock("n", wall)
    versions = [clock.issue() for _ in range(MAX_COUNTER + 3)]
    wall.now -= 3600  # NTP steps the clock back an hour
    versions += [clock.issue() for _ in range(3)]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert versions[0] == (1_000_000_000, 0, "n")
    assert versions[MAX_COUNTER + 1] == (1_000_000_001, 0, "n")  # the counter is full: the next millisecond


def test_a_version_observed_makes_every_later_version_newer_whatever_its_node():
    clock = HybridLogicalClock("a", Clock())
    seen = (1_000_000_000 + 5_000, 9, "zzzz")
    clock.observe(seen)
    assert clock.issue() > seen
    clock.observe((1, 0, "old"))  # an older one changes nothing
    assert clock.issue()[:2] == (1_000_000_000 + 5_000, 11)


@TABLES
def test_loading_moves_the_clock_past_the_newest_version_loaded(table: type[Store]) -> None:
    store = table(clock=Clock())
    store.load(iter([("k", "v", (2_000_000_000, 4, "b"), None), ("t", None, (1_500_000_000, 0, "c"), None)]),
               1_000_000.0)
    store.set("k", "mine")
    assert store.version("k") == (2_000_000_000, 5, "")


RECORDS = st.lists(st.tuples(st.sampled_from("abc"), st.one_of(st.none(), st.sampled_from(["1", "2", "3"])),
                             st.tuples(st.integers(999_990_000, 1_000_000_000), st.integers(0, 2),
                                       st.sampled_from(["x", "y"]))),
                   max_size=30)


@TABLES
@settings(max_examples=200, deadline=None)
@given(records=RECORDS, order=st.randoms(use_true_random=False))
def test_replicas_given_the_same_records_in_any_order_hold_the_same_table(table, records, order):
    """What read-repair and rebalancing rely on: putv converges, whatever order the copies arrive in."""
    shuffled = list(records)
    order.shuffle(shuffled)
    replicas = []
    for feed in (records, shuffled):
        store = table(clock=Clock())
        for key, value, version in feed:
            store.put_if_newer(key, value, version, None)
        replicas.append(store)
    first, second = replicas
    assert sorted(first.records(), key=repr) == sorted(second.records(), key=repr)
    # The newest version wins; of one version (a faulty peer's), the delete, then the larger value.
    newest: dict[str, tuple[str | None, tuple[int, int, str]]] = {}
    for key, value, version in records:
        rank = (version, value is None, value or "")
        held = newest.get(key)
        if held is None or rank > (held[1], held[0] is None, held[0] or ""):
            newest[key] = (value, version)
    assert {key: (value, version) for key, value, version, _ in first.records()} == newest
    assert len(first) == sum(value is not None for value, _ in newest.values())
