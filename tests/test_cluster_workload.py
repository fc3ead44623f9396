"""The cluster workload's checker on hand-made histories, and its recorder on a real three-node cluster.

The checker is what the container tests (tests/test_cluster_changes.py) rest
on: each anomaly it names must be found when it is there and not otherwise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from tests.cluster_workload import DEL, FINAL, GET, SET, Change, History, Op, Recorder, Spec, check
from tests.history import FAIL, INFO, OK
from tests.servers import ServerProcess


def op(kind: str, start: float, end: float, value: str | None = None, outcome: str = OK, key: str = "k",
       error: str = "") -> Op:
    return Op("w", kind, key, value, start, end, outcome, error=error)


def counts(*ops: Op, changes: tuple[Change, ...] = (), crashes: tuple[str, ...] = ()) -> dict[str, int]:
    found = check(History(list(ops), list(changes), list(crashes))).counts()
    return {kind: n for kind, n in found.items() if n}


def test_a_clean_history_has_no_anomaly():
    assert counts(
        op(SET, 0, 1, "v1"), op(GET, 2, 3, "v1"),
        op(SET, 4, 5, "v2"), op(GET, 4.5, 6, "v1"),  # concurrent with the set: either value
        op(DEL, 7, 8), op(GET, 7.5, 9, "v2"), op(GET, 10, 11, None),
        op(SET, 12, math.inf, "v3", INFO), op(GET, 13, 14, None), op(GET, 15, 16, "v3"),  # may happen, or not
        op(SET, 17, 18, "refused", FAIL), op(FINAL, 20, 21, "v3"),
        op(GET, 0, 1, None, key="never"), op(FINAL, 20, 21, None, key="never"),
    ) == {}


def test_a_read_that_misses_or_fails_after_an_acknowledged_set_is_unreadable():
    assert counts(op(SET, 0, 1, "v1"), op(GET, 2, 3, None)) == {"unreadable": 1}
    assert counts(op(SET, 0, 1, "v1"), op(GET, 2, 3, None, INFO, error="NodeUnavailableError: x")) == {
        "unreadable": 1}
    # A delete that may have happened since excuses the miss; one that ended before the set does not.
    assert counts(op(SET, 0, 1, "v1"), op(DEL, 1.5, math.inf, outcome=INFO), op(GET, 2, 3, None)) == {}
    assert counts(op(DEL, 0, 0.5), op(SET, 1, 2, "v1"), op(GET, 3, 4, None)) == {"unreadable": 1}
    # A concurrent set does not excuse a miss: the earlier acknowledged one had to be there.
    assert counts(op(SET, 0, 1, "v1"), op(SET, 2, 4, "v2"), op(GET, 3, 5, None)) == {"unreadable": 1}


def test_a_final_read_that_misses_or_reads_an_older_value_is_lost():
    assert counts(op(SET, 0, 1, "v1"), op(FINAL, 2, 3, None)) == {"lost": 1}
    assert counts(op(SET, 0, 1, "v1"), op(SET, 2, 3, "v2"), op(FINAL, 4, 5, "v1")) == {"lost": 1}


def test_a_value_read_after_an_acknowledged_delete_is_resurrected():
    assert counts(op(SET, 0, 1, "v1"), op(DEL, 2, 3), op(GET, 4, 5, "v1")) == {"resurrected": 1}
    assert counts(op(SET, 0, 1, "v1"), op(DEL, 2, 3), op(FINAL, 4, 5, "v1")) == {"resurrected": 1}
    # A set concurrent with the delete may be ordered after it.
    assert counts(op(SET, 0, 2.5, "v1"), op(DEL, 2, 3), op(GET, 4, 5, "v1")) == {}


def test_an_older_value_read_outside_a_change_is_stale_and_during_one_a_figure():
    history = [op(SET, 0, 1, "v1"), op(SET, 2, 3, "v2"), op(GET, 4, 5, "v1")]
    assert counts(*history) == {"stale": 1}
    report = check(History(history, [Change("restart", 3.5, 6)]))
    assert report.counts()["stale"] == 0
    assert report.figures["older values read during changes"] == 1


def test_a_value_nobody_was_writing_is_a_phantom():
    assert counts(op(SET, 0, 1, "v1"), op(GET, 2, 3, "made-up")) == {"phantom": 1}
    assert counts(op(GET, 0, 1, "v1"), op(SET, 2, 3, "v1")) == {"phantom": 1}  # read before it was written


def test_crashes_refused_reads_and_unexpected_errors_are_errors():
    assert counts(crashes=("r0: RuntimeError: boom",)) == {"errors": 1}
    assert counts(op(GET, 0, 1, None, FAIL, error="InvalidRequestError: no")) == {"errors": 1}
    assert counts(op(SET, 0, math.inf, "v1", INFO, error="unexpected KeyError: 'x'")) == {"errors": 1}


def test_a_history_survives_its_json_form():
    history = History([op(SET, 0, math.inf, "v1", INFO), op(GET, 1, 2, None)], [Change("c", 1, math.inf)], ["x"])
    assert History.from_json(history.to_json()) == history


def test_the_recorder_on_a_steady_cluster_sees_no_anomaly(start_server: Callable[..., ServerProcess]):
    nodes = tuple(start_server().node for _ in range(3))
    recorder = Recorder(Spec(nodes, static_keys=200, churn_keys=50))
    recorder.start()
    time.sleep(1.0)
    report = check(recorder.stop())
    assert report.counts() == dict.fromkeys(report.counts(), 0), report.summary()
    writes = report.figures["writes"]
    assert writes["set ok"] > 200 and writes["del ok"] > 0 and report.figures["key reads"] > 0


def test_the_recorder_sees_what_nodes_that_lost_their_data_hide(start_server: Callable[..., ServerProcess]):
    """Two of three nodes (R=2) restarted empty (in memory, no data dir) on their old ports: the keys
    both held read as missing -- what the checker must call unreadable, then lost."""
    servers = [start_server() for _ in range(3)]
    recorder = Recorder(Spec(tuple(s.node for s in servers), static_keys=200, churn_keys=50, writers=0))
    recorder.start()
    time.sleep(0.3)
    for server in servers[:2]:
        server.kill()
        start_server("--port", str(server.port))
    time.sleep(0.5)
    found = check(recorder.stop()).counts()
    assert found["unreadable"] > 0 and found["lost"] > 0
