"""Scan pages that end inside a bucket (or between index resizes) still return every key present throughout
exactly once."""

from __future__ import annotations

import random
from collections.abc import Callable

from server.store import BUCKETS, SCAN_POSITIONS, SUB_BUCKETS, WHOLE_BUCKET_KEYS, Store
from tests.tables import TABLES

KEYS = 40 * BUCKETS  # about 40 per bucket: every bucket is scanned in sub-buckets


def _scan_in_steps(store: Store, pattern: str, between_pages: Callable[[], None]) -> list[str]:
    """One step per page (the deadline has always passed); ``between_pages`` changes the table."""
    found, cursor, pages = [], 0, 0
    while True:
        cursor, page = store.scan(cursor, pattern, 10**6, deadline=0.0)
        found += page
        pages += 1
        assert 0 <= cursor < SCAN_POSITIONS
        if cursor == 0:
            return found
        assert pages < SCAN_POSITIONS, "the scan made no progress"
        between_pages()


@TABLES
def test_keys_present_for_the_whole_scan_come_back_exactly_once_while_others_come_and_go(
        table: type[Store]) -> None:
    assert KEYS // BUCKETS > WHOLE_BUCKET_KEYS
    store = table()
    stable = [f"stable:{i}" for i in range(KEYS)]
    for key in stable:
        store.set(key, "v")
    rng = random.Random(3)
    churn = [f"churn:{i}" for i in range(5000)]

    def change() -> None:
        for _ in range(3):
            key = rng.choice(churn)
            if store.get(key) is None:
                store.set(key, "v")
            else:
                store.delete(key)

    found = _scan_in_steps(store, "*:*", change)  # not "*", which takes whole buckets
    kept = [key for key in found if key.startswith("stable:")]
    assert len(kept) == len(set(kept)) == KEYS
    assert len(found) == len(set(found))


@TABLES
def test_keys_present_for_the_whole_scan_come_back_exactly_once_while_the_table_grows(table: type[Store]) -> None:
    """The compact table's index doubles six times (and its slots move) between pages here."""
    store = table()
    stable = [f"stable:{i}" for i in range(300)]
    for key in stable:
        store.set(key, "v")
    added = iter(range(10**6))

    def grow() -> None:
        if len(store) < 20_000:
            for _ in range(100):
                store.set(f"more:{next(added)}", "v")

    found = _scan_in_steps(store, "*", grow)
    kept = [key for key in found if key.startswith("stable:")]
    assert sorted(kept) == sorted(stable)
    assert len(found) == len(set(found))


def test_a_page_can_end_inside_a_bucket():
    store = Store()
    for i in range(KEYS):
        store.set(f"k{i}", "v")
    cursor, page = store.scan(0, "k*", 10**6, deadline=0.0)
    assert 0 < cursor < SUB_BUCKETS  # still in bucket 0
    assert 0 < len(page) < KEYS // BUCKETS
    cursor, page = store.scan(0, "*", 10**6, deadline=0.0)  # nothing to match: whole buckets
    assert cursor == SUB_BUCKETS and len(page) > WHOLE_BUCKET_KEYS


@TABLES
def test_count_and_bytes_end_a_page_too(table: type[Store]) -> None:
    store = table()
    for i in range(1000):
        store.set(f"key:{i:04d}", "v")
    cursor, page = store.scan(0, "*", 10)
    assert cursor and 10 <= len(page) < 1000
    cursor, page = store.scan(0, "*", 10**6, max_bytes=100)
    assert cursor and 100 <= 8 * len(page) < 1000 * 8
