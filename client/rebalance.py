"""Rebalance: put every key on the owners the current membership gives it, R copies each.

Run it after adding or removing nodes, or after a node came back. It walks
the versioned records (values and tombstones) of every member, and of the
nodes being removed (``leaving``, drained first), page by page (``scanv``)
and, for each record:

1. copies it to each owner with ``putv``, which keeps whichever version is
   newer: a copy never overwrites a newer write, and an older value never
   undoes a delete (the owner's tombstone is newer);
2. once every owner holds it (or something newer), removes a value from a
   member that is not an owner, with compare-and-set against the value it
   copied (the value is swapped for an empty one that expires a millisecond
   later and leaves no tombstone, which a later return of that node to the
   owners would otherwise carry as a newer delete): a value changed meanwhile
   on that node is kept. Records that expire within ``EXPIRING_S`` are not
   copied, so such an empty value never replaces a copy on an owner.

Guarantee: no write or delete made while rebalance runs, or before it, is
undone by it; running it again is safe and copies nothing that is already in
place. Writes through an old membership to a node that is no longer an owner
are kept there until the next run copies them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from client.client import Client
from client.cluster import ClusterClient
from client.records import PUTV, SCANV, Record
from client.requests import Request
from common.errors import NodeUnavailableError
from common.limits import MAX_BATCH_KEYS

#: Keys fetched from a node per step.
PAGE_KEYS = 1000

#: Lifetime of the empty value that replaces a removed copy (the cas-delete).
REMOVED_TTL_S = 0.001

#: Records expiring sooner than this are not copied: they are about to vanish
#: anyway, and the one a removal left (a version newer than the copies) must not
#: reach an owner, whose copy it would replace.
EXPIRING_S = 1.0


@dataclass
class RebalanceReport:
    """What one rebalance run did; ``complete`` is False if a node failed midway."""

    examined: int = 0  # records looked at, over all nodes (tombstones included)
    copied: int = 0  # records an owner took because it held an older version or nothing
    removed: int = 0  # copies removed from nodes that are not owners
    kept_changed: int = 0  # non-owner copies kept because they changed meanwhile
    failures: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failures


def rebalance(
    cluster: ClusterClient, progress: Callable[[int], None] | None = None, page_keys: int = PAGE_KEYS
) -> RebalanceReport:
    """Move every key to its owners under ``cluster``'s membership and restore R copies.

    Args:
        progress: called with the number of records examined after each page.

    Raises:
        NodeUnavailableError: a member does not answer before the start (a
            rebalance needs them all; re-run once they are back).
    """
    answers = cluster.on_each({name: Client.ping for name in [*cluster.nodes, *cluster.leaving]})
    down = [name for name, result in answers.items() if isinstance(result, NodeUnavailableError)]
    if down:
        raise NodeUnavailableError(f"cannot rebalance while {', '.join(down)} do not answer", node=",".join(down))
    report = RebalanceReport()
    for source in [*cluster.leaving, *cluster.nodes]:
        try:
            _rebalance_node(cluster, source, report, progress, page_keys)
        except NodeUnavailableError as exc:
            report.failures.append(f"{source}: {exc}")
    return report


def total_copies(cluster: ClusterClient) -> int:
    """Keys over all members and leaving nodes, counting each copy (the progress bar's total)."""
    results = cluster.on_each({name: Client.stats for name in [*cluster.nodes, *cluster.leaving]})
    return sum(int(result.get("keys", 0)) for result in results.values() if isinstance(result, dict))


def _rebalance_node(
    cluster: ClusterClient,
    source: str,
    report: RebalanceReport,
    progress: Callable[[int], None] | None,
    page_keys: int,
) -> None:
    cursor = 0
    while True:
        # cluster.on() runs each lambda before it returns, so the loop variables it reads are current.
        cursor, records = cluster.on(source, lambda c: c._send(Request(SCANV, [cursor, page_keys], None)))  # noqa: B023
        if records:
            _place_page(cluster, source, records, report)
            report.examined += len(records)
            if progress is not None:
                progress(len(records))
        if cursor == 0:
            return


def _place_page(cluster: ClusterClient, source: str, records: list[Record], report: RebalanceReport) -> None:
    owners = {record[0]: cluster.owners(record[0]) for record in records}
    wanted: dict[str, list[Record]] = {}  # owner -> the records it should hold
    soon_s = time.time() + EXPIRING_S
    for record in records:
        if record[3] is not None and record[3] < soon_s:
            continue  # expiring: not worth a copy, and a removed copy (below) must never be copied back
        for name in owners[record[0]]:
            if name != source:
                wanted.setdefault(name, []).append(record)
    results = cluster.on_each({name: _put(share) for name, share in wanted.items()})
    failed = set()
    for name, result in results.items():
        if isinstance(result, NodeUnavailableError):
            report.failures.append(f"{name}: {result}")
            failed.add(name)
        else:
            report.copied += sum(result)
    for key, value in ((record[0], record[1]) for record in records):
        if source in owners[key] or value is None or failed.intersection(owners[key]):
            continue
        if cluster.on(source, lambda c: c.cas(key, value, "", ttl_s=REMOVED_TTL_S)):  # noqa: B023 (run at once)
            report.removed += 1
        else:
            report.kept_changed += 1


def _put(records: list[Record]) -> Callable[[Client], list[bool]]:
    """``putv`` of ``records`` to one node, a request per MAX_BATCH_KEYS of them: which it took."""
    return lambda client: [taken for start in range(0, len(records), MAX_BATCH_KEYS)
                           for taken in client._send(Request(PUTV, [records[start:start + MAX_BATCH_KEYS]], None))]
