"""Replies are checked against the reply limit and the memory cap before they are built (no socket)."""

from __future__ import annotations

from typing import Any

import pytest

from common.limits import Limits
from common.protocol import Status, decode_reply, encode_batch, encode_request
from server.eviction import EVICTION_POLICIES
from server.handler import Handler
from server.memory import MemoryGuard
from server.output import OutputQueue
from server.store import Store

KIB = 1024


def call(handler: Handler, op: str, *args: Any, **options: Any) -> tuple[int, Any]:
    return decode_reply(handler.handle(encode_request(op, *args, options=options or None)))


@pytest.fixture
def limited() -> Handler:
    handler = Handler(Store(), Limits(max_reply_bytes=64 * KIB))
    for i in range(10):
        handler.store.set(f"v{i}", "x" * (20 * KIB))
    handler.store.set("huge", "x" * (100 * KIB))
    handler.store.set("accents", "é" * (20 * KIB))  # 40 KiB of UTF-8
    handler.store.set("more accents", "é" * (40 * KIB))  # 80 KiB of UTF-8
    return handler


def test_a_reply_over_the_limit_is_refused_and_one_under_it_is_answered(limited):
    status, message = call(limited, "get", "huge")
    assert status == Status.TOO_LARGE and "over the reply limit of 65536 bytes" in message
    assert call(limited, "get", "v0") == (0, "x" * (20 * KIB))
    assert call(limited, "mget", ["v0", "v1", "v2"])[0] == Status.OK
    assert call(limited, "mget", ["v0", "v1", "v2", "v3"])[0] == Status.TOO_LARGE
    assert call(limited, "get", "accents")[0] == Status.OK  # counted as the UTF-8 it is sent as
    assert call(limited, "get", "more accents")[0] == Status.TOO_LARGE


def test_a_keys_page_stops_before_its_reply_is_over_the_limit(limited):
    for i in range(200):
        limited.store.set(f"{i:04d}" + "k" * 996, "v")  # 1 KB keys: 200 KB of them
    cursor, found = 0, []
    while True:
        status, (cursor, page) = call(limited, "keys", "*", cursor, 10_000)
        assert status == Status.OK and sum(map(len, page)) <= 64 * KIB
        found += page
        if cursor == 0:
            break
    assert len(found) == len(set(found)) == 200 + 13


def test_a_batch_shares_the_limit_and_what_no_longer_fits_is_not_run(limited):
    items = [encode_request("get", "v0")] * 5 + [encode_request("set", "late", "x")]
    status, replies = decode_reply(limited.handle(encode_batch(items)))
    assert status == Status.OK and len(replies) == 6
    assert [r[0] for r in replies[:2]] == [Status.OK, Status.OK]  # 2 x 20 KiB, then too little is left
    assert all(r == [Status.TOO_LARGE, "not run: the batch's replies reached the reply limit"] for r in replies[3:])
    assert limited.store.get("late") is None  # a write that was not run was not applied
    assert call(limited, "get", "v0")[0] == Status.OK  # the next request has the whole limit again


def _capped(policy: str) -> tuple[Handler, MemoryGuard, OutputQueue]:
    store = Store()
    output = OutputQueue(1 << 30, 1 << 30)
    guard = MemoryGuard(store, 8 * 1024 * KIB, EVICTION_POLICIES[policy], output, baseline_bytes=0)
    return Handler(store, memory=guard), guard, output


def test_under_a_cap_a_full_table_still_answers_a_reply_of_the_largest_size():
    handler, guard, output = _capped("noeviction")
    assert guard.reply_reserve_bytes == 1024 * KIB
    assert output.max_peer_bytes == handler.max_reply_bytes == 512 * KIB
    largest = "z" * (handler.max_reply_bytes - 16)
    assert call(handler, "set", "largest", largest) == (0, True)
    i = 0
    while call(handler, "set", f"k{i}", "y" * (10 * KIB))[0] == Status.OK:
        i += 1
    assert i > 100 and guard.used_bytes + guard.reply_reserve_bytes > guard.max_memory_bytes - 20 * KIB
    assert call(handler, "get", "largest") == (0, largest)
    assert call(handler, "get", "z" * 10)[0] == Status.OK


def test_under_a_cap_a_reply_without_room_is_refused_or_makes_room_by_evicting():
    for policy, expected in (("noeviction", Status.OUT_OF_MEMORY), ("allkeys-lru", Status.OK)):
        handler, guard, output = _capped(policy)
        for i in range(700):
            handler.store.set(f"k{i}", "y" * (10 * KIB))
        handler.store.set("big", "z" * (400 * KIB))
        output.queued_bytes = 512 * KIB  # replies another peer has not read yet
        status, payload = call(handler, "get", "big")
        assert status == expected, payload
        if policy == "noeviction":
            assert payload.startswith("out of memory: no room for a reply") and guard.refused_replies == 1
        else:
            assert guard.evicted_keys > 0 and guard.used_bytes <= guard.max_memory_bytes
