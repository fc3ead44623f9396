"""The history checker itself, on hand-made histories: it must accept what is possible and
catch each kind of anomaly (so that a green run of tests/test_history.py means something)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.history import FAIL, INFO, OK, History, Op, check, linearizable, split_by_key


def op(kind: str, args: tuple[Any, ...], start: float, end: float, result: Any = None, outcome: str = OK,
       worker: str = "w") -> Op:
    return Op(worker, kind, args, start, math.inf if outcome == INFO else end, outcome, result)


def anomalies(*ops: Op, **options: Any) -> list[str]:
    return check(History(list(ops)), **options).anomalies


def test_a_sequential_history_that_follows_the_model_passes():
    assert anomalies(
        op("get", ("k",), 0, 1, None),
        op("set", ("k", "a"), 2, 3, True),
        op("get", ("k",), 4, 5, "a"),
        op("cas", ("k", "a", "b"), 6, 7, True),
        op("cas", ("k", "a", "c"), 8, 9, False),
        op("mget", (("k", "j"),), 10, 11, ["b", None]),
        op("del", ("k",), 12, 13, True),
        op("del", ("k",), 14, 15, False),
        op("mset", ((("k", "d"), ("j", "e")),), 16, 17, None),
        op("incr", ("n", 5), 18, 19, 5),
        op("incr", ("n", 7), 20, 21, 12),
        op("get", ("n",), 22, 23, "12"),
    ) == []


def test_a_read_concurrent_with_a_write_may_see_either_value():
    write = op("set", ("k", "new"), 1, 10, True)
    assert anomalies(op("set", ("k", "old"), 0, 0.5, True), write, op("get", ("k",), 2, 3, "new"),
                     op("get", ("k",), 4, 5, "new")) == []
    assert anomalies(op("set", ("k", "old"), 0, 0.5, True), write, op("get", ("k",), 2, 3, "old")) == []


def test_a_stale_read_after_an_acknowledged_write_is_caught():
    found = anomalies(op("set", ("k", "a"), 0, 1, True), op("set", ("k", "b"), 2, 3, True),
                      op("get", ("k",), 4, 5, "a"))
    assert len(found) == 1 and "not linearizable" in found[0] and "get('k',) -> 'a'" in found[0]


def test_reads_that_go_back_in_time_are_caught_even_while_a_write_is_in_flight():
    write = op("set", ("k", "new"), 1, 10, True)
    found = anomalies(op("set", ("k", "old"), 0, 0.5, True), write,
                      op("get", ("k",), 2, 3, "new"), op("get", ("k",), 4, 5, "old"))
    assert found and "not linearizable" in found[0]


def test_a_write_answered_with_an_error_must_never_be_seen():
    refused = op("set", ("k", "x"), 0, 1, "OutOfMemoryError: full", outcome=FAIL)
    assert anomalies(refused, op("get", ("k",), 2, 3, None), allowed_errors=("OutOfMemoryError",)) == []
    found = anomalies(refused, op("get", ("k",), 2, 3, "x"), allowed_errors=("OutOfMemoryError",))
    assert found and "not linearizable" in found[0]


def test_an_error_the_mode_does_not_allow_is_an_anomaly():
    found = anomalies(op("set", ("k", "x"), 0, 1, "InvalidRequestError: the first element (op) must be a string",
                         outcome=FAIL))
    assert found and found[0].startswith("error:")
    unexpected = anomalies(op("get", ("k",), 0, 1, "unexpected ZMQError: Operation not supported", outcome=INFO))
    assert unexpected and unexpected[0].startswith("error:")


def test_an_unanswered_write_may_take_effect_late_or_never_but_not_before_it_started():
    lost = op("set", ("k", "late"), 1, 0, outcome=INFO, result="NodeUnavailableError: no reply")
    assert anomalies(lost, op("get", ("k",), 2, 3, None), op("get", ("k",), 50, 51, "late")) == []
    assert anomalies(lost, op("get", ("k",), 2, 3, None)) == []
    found = anomalies(op("get", ("k",), 0, 0.5, "late"), lost)
    assert found and "not linearizable" in found[0]


def test_an_incr_applied_twice_is_caught():
    history = [op("incr", ("n", 5), 0, 1, 5), op("incr", ("n", 7), 2, 3, 19)]  # 5 + 7 applied twice
    found = anomalies(*history)
    assert found and "not linearizable" in found[0]
    final = op("mget", (("n",),), 10, 11, ["17"], worker="final")
    found = check(History([op("incr", ("n", 5), 0, 1, 5)]), final, counters=["n"]).anomalies
    assert any("incr not counted exactly once" in a for a in found)


def test_an_unanswered_incr_counts_at_most_once():
    lost = op("incr", ("n", 5), 0, 0, outcome=INFO, result="NodeUnavailableError: no reply")
    for value in ("0", "5"):
        final = op("mget", (("n",),), 10, 11, [None if value == "0" else value], worker="final")
        assert check(History([lost]), final, counters=["n"]).anomalies == []
    final = op("mget", (("n",),), 10, 11, ["10"], worker="final")
    assert check(History([lost]), final, counters=["n"]).anomalies != []


def test_evictions_explain_missing_keys_and_nothing_else():
    history = [op("set", ("k", "a"), 0, 1, True), op("set", ("k", "b"), 2, 3, True), op("get", ("k",), 4, 5, None)]
    assert anomalies(*history) != []
    assert anomalies(*history, evictions=True) == []
    stale = [op("set", ("k", "a"), 0, 1, True), op("set", ("k", "b"), 2, 3, True), op("get", ("k",), 4, 5, "a")]
    assert anomalies(*stale, evictions=True) != []
    assert anomalies(op("incr", ("n", 5), 0, 1, 5), op("incr", ("n", 1), 2, 3, 1), evictions=True) == []


def test_cas_and_del_results_must_agree_with_the_state():
    assert anomalies(op("cas", ("k", "a", "b"), 0, 1, True)) != []  # the key is missing
    assert anomalies(op("del", ("k",), 0, 1, True)) != []
    assert anomalies(op("set", ("k", "a"), 0, 1, True), op("del", ("k",), 2, 3, False)) != []


def test_without_linearizability_a_value_nobody_wrote_is_still_caught():
    history = [op("set", ("k", "a"), 0, 1, True), op("set", ("k", "b"), 2, 3, True), op("get", ("k",), 4, 5, "a")]
    assert anomalies(*history, strict=False) == []  # stale, but written: allowed when nodes fail
    found = anomalies(op("get", ("k",), 0, 1, "never-written"), strict=False)
    assert found and "phantom" in found[0]
    found = anomalies(op("get", ("k",), 0, 1, "later"), op("set", ("k", "later"), 2, 3, True), strict=False)
    assert found and "phantom" in found[0]


def test_the_search_reports_a_history_too_large_to_decide():
    ops = [op("set", ("k", str(i)), 0, 100, True) for i in range(12)] + [op("get", ("k",), 200, 201, "x")]
    problem = linearizable(split_by_key(ops)["k"], budget=1000)
    assert problem is not None and problem.startswith("undecided")


@pytest.mark.parametrize("writers", [2, 6])
def test_many_concurrent_writes_and_reads_are_decided_quickly(writers):
    ops = []
    for round_no in range(40):
        base = round_no * 10
        for w in range(writers):
            ops.append(op("set", ("k", f"{round_no}.{w}"), base, base + 5, True))
        ops.append(op("get", ("k",), base + 6, base + 7, f"{round_no}.{writers - 1}"))
    assert linearizable(split_by_key(ops)["k"]) is None
