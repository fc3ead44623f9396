"""Rebalance: put every key on the owners the current membership gives it, R copies each.

Run it after adding or removing nodes, or after a node came back empty. It
walks the keys of every member, and of the nodes being removed (``leaving``,
drained first), page by page and, for each key:

1. copies it to each owner that lacks it, with ``set nx`` (and the key's
   remaining TTL): a copy never overwrites a value that is already there, so
   a write a client made meanwhile through the new membership wins;
2. once every owner holds the key, removes it from a member that is not an
   owner, with compare-and-set against the value it copied (the value is
   swapped for an empty one that expires a millisecond later, as there is no
   conditional delete): a value changed meanwhile on that node is kept;
3. re-reads the source of every copy it made: if the key was deleted or
   changed there meanwhile, the copy is taken back (again by compare-and-set,
   so a newer value on the owner is kept), so a delete is not undone.

Guarantee: with clients already using the new membership, no write that a
client made while rebalance ran is lost or overwritten. Writes through the
old membership to a node that is no longer an owner can be lost: switch
clients first, then rebalance. Running it again is safe and copies nothing
that is already in place. Owners that hold different values for a key are
counted as conflicts and left alone (keys carry no version to tell which is
newer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from client.client import Client
from client.cluster import ClusterClient
from common.errors import NodeUnavailableError

#: Keys fetched from a node per step.
PAGE_KEYS = 1000

#: Lifetime of the empty value that replaces a removed copy (the cas-delete).
REMOVED_TTL_S = 0.001


@dataclass
class RebalanceReport:
    """What one rebalance run did; ``complete`` is False if a node failed midway."""

    examined: int = 0  # copies looked at, over all nodes
    copied: int = 0  # copies placed on owners that lacked them
    removed: int = 0  # copies removed from nodes that are not owners
    kept_changed: int = 0  # non-owner copies kept because they changed meanwhile
    conflicts: int = 0  # keys whose owners hold different values
    failures: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failures


def rebalance(
    cluster: ClusterClient, progress: Callable[[int], None] | None = None, page_keys: int = PAGE_KEYS
) -> RebalanceReport:
    """Move every key to its owners under ``cluster``'s membership and restore R copies.

    Args:
        progress: called with the number of copies examined after each page.

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
    # Asking each copied key's TTL costs a round trip; skip it when there are none.
    with_ttl = bool(cluster.on(source, Client.stats).get("keys_with_ttl", 1))
    cursor = 0
    while True:
        # cluster.on() runs each lambda before it returns, so the loop variables it reads are current.
        cursor, keys = cluster.on(source, lambda c: c.scan(cursor, "*", page_keys))  # noqa: B023
        if keys:
            values = cluster.on(source, lambda c: c.mget(keys))  # noqa: B023
            present = {key: value for key, value in zip(keys, values, strict=True) if value is not None}
            _place_page(cluster, source, present, report, with_ttl)
            report.examined += len(keys)
            if progress is not None:
                progress(len(keys))
        if cursor == 0:
            return


def _place_page(
    cluster: ClusterClient, source: str, values: dict[str, str], report: RebalanceReport, with_ttl: bool
) -> None:
    owners = {key: cluster.owners(key) for key in values}
    wanted: dict[str, list[str]] = {}  # owner -> keys it should hold
    for key, names in owners.items():
        for name in names:
            if name != source:
                wanted.setdefault(name, []).append(key)
    results = cluster.on_each(
        {name: _copy_missing(cluster, source, keys, values, with_ttl) for name, keys in wanted.items()}
    )
    copies: dict[str, _Copied] = {}
    for name, result in results.items():
        if isinstance(result, NodeUnavailableError):
            report.failures.append(f"{name}: {result}")
        else:
            copies[name] = result
            report.copied += len(result.new)
            report.conflicts += result.conflicts

    # Take back copies whose source changed meanwhile, so that a delete or a
    # newer write racing with the copy is not undone.
    copied_keys = sorted({key for copy in copies.values() for key in copy.new})
    if copied_keys:
        now = dict(zip(copied_keys, cluster.on(source, lambda c: c.mget(copied_keys)), strict=True))
        for name, copy in copies.items():
            for key in copy.new:
                if now[key] != values[key]:
                    # cluster.on() runs the lambda at once, while key is this iteration's.
                    cluster.on(name, lambda c: c.cas(key, values[key], "", ttl_s=REMOVED_TTL_S))  # noqa: B023
                    report.copied -= 1
                    copy.held.discard(key)

    for key, names in owners.items():
        if source in names or not all(name in copies and key in copies[name].held for name in names):
            continue
        if cluster.on(source, lambda c: c.cas(key, values[key], "", ttl_s=REMOVED_TTL_S)):  # noqa: B023 (run at once)
            report.removed += 1
        else:
            report.kept_changed += 1


@dataclass
class _Copied:
    """One owner after copying: the keys it holds, those this run placed, conflicts seen."""

    held: set[str] = field(default_factory=set)
    new: list[str] = field(default_factory=list)
    conflicts: int = 0


def _copy_missing(
    cluster: ClusterClient, source: str, keys: list[str], values: dict[str, str], with_ttl: bool
) -> Callable[[Client], _Copied]:
    def copy(owner: Client) -> _Copied:
        done = _Copied()
        for key, value in zip(keys, owner.mget(keys), strict=True):
            if value is None:
                ttl_s = cluster.on(source, lambda c: c.ttl(key)) if with_ttl else -1  # noqa: B023 (run at once)
                if ttl_s == -2:
                    continue  # gone from the source meanwhile
                if owner.set(key, values[key], ttl_s=ttl_s if ttl_s > 0 else None, nx=True):
                    done.new.append(key)
            elif value != values[key] and cluster.owners(key)[0] == source:
                done.conflicts += 1  # counted once, when scanning the first owner
            done.held.add(key)
        return done

    return copy
