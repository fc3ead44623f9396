"""What only the compact table (server/_cstore.pyx) does: its order of use, and text Python allows but UTF-8 does not.

Everything else it shares with the Python table is tested on both
(tests/tables.py: test_store_model, test_store_scan, test_versions_store...).
"""

from __future__ import annotations

from server._cstore import CompactStore
from tests.tables import TABLES


def test_the_table_keeps_its_live_keys_in_order_of_use() -> None:
    store = CompactStore()
    store.set("old", "1")  # held before tracking starts: older than any later use
    assert store.track_recency()
    assert store.least_recently_used() == "old"
    for key in "abc":
        store.set(key, "v")
    store.get("old")
    assert store.least_recently_used() == "a"
    assert store.exists("a") and store.ttl("b") == -1  # any operation that finds a key uses it
    assert store.least_recently_used() == "c"
    store.delete("c")
    store.evict("old")
    assert store.least_recently_used() == "a"
    store.put_if_newer("a", None, (2**40, 0, "peer"), None)  # a tombstone is never evicted
    assert store.least_recently_used() == "b"
    for key in list("ab"):
        store.evict(key)
    assert store.least_recently_used() is None and len(store) == 0


@TABLES
def test_lone_surrogates_in_keys_and_values_round_trip(table) -> None:
    store = table()
    store.set("\ud800key", "value\udfff")
    store.set("plain", "v")
    assert store.get("\ud800key") == "value\udfff"
    assert sorted(store.scan(0, "*", 100)[1]) == ["plain", "\ud800key"]
    assert store.delete("\ud800key") and store.tombstone("\ud800key") is not None


def test_records_sharing_a_home_slot_are_split_over_pages_by_the_byte_limit() -> None:
    # 40 keys in an index of a few dozen slots: several share a home slot, whose positions a step covers at
    # once. A page over its byte limit must end after one position (as the Python table's sub-buckets do),
    # else a scanv reply of such records passes the reply limit (tests/test_versions.py found it).
    store = CompactStore()
    for i in range(40):
        store.put(f"k{i}", "v" * 3000, None)
    cursor, pages = 0, []
    while True:
        cursor, records = store.scan_records(cursor, 1000, max_bytes=1)
        pages.append([record[0] for record in records])
        if cursor == 0:
            break
    assert sorted(key for page in pages for key in page) == sorted(f"k{i}" for i in range(40))
    assert max(len(page) for page in pages) == 1
