"""A node back in its cluster after longer than the tombstone grace sets its data aside and joins as a new node.

A delete leaves a tombstone for ``--tombstone-grace-s``; after that the
nodes that hold it collect it. A node that was away for longer may still
hold a value of a key deleted meanwhile, whose delete is now traced nowhere:
served, or pulled by the others' reads, that value would outvote nothing and
come back. Cassandra asks the operator to wipe such a node before it
returns (``gc_grace_seconds``); this node does it itself, at start, before
its data dir is read.

*Away since when*: since the node was last ready, kept in the data dir
(``last-ready``, written by the membership thread while the node is ready
and as it stops: server/membership.py). While a node is ready the cluster's
writes and deletes reach it, since it owns keys, so its records are current
up to then; a node that left, or that stopped while still joining, is not
(a joining node has not pulled yet). A data dir without that file (kept by
an earlier release) is judged by the newest modification time of its files.

The node sets its records aside when it was away longer than the grace less
:data:`PULL_SHARE_OF_GRACE` of it, which is left for its join to pull what it
missed before the oldest tombstones it needs are collected. It sets aside
only as a member of a cluster: with ``--join`` and a kept view naming
another member that has not left. A node alone (no ``--join``, or no other
member known) holds the only copy of its data, and keeps it.

Setting aside moves the table's files (snapshots, journals), the view and
the ``last-ready`` file into ``discarded-<UTC time>`` in the data dir, never
read again (the operator may inspect or delete it), and logs one line
saying so. The node then starts with an empty table and no view, and joins
through its seeds as a new node does: it pulls every record it owns.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from common.membership import LEFT
from server.datadir import DataDir
from server.membership import MEMBERS_FILE, READY_STAMP_FILE, last_ready_s, saved_view

log = logging.getLogger(__name__)

#: The share of ``--tombstone-grace-s`` left for a returning node's join to
#: pull what it missed: a node away longer than the rest sets its records aside.
PULL_SHARE_OF_GRACE = 0.1

#: The name of the directory the records are moved to; the UTC time of the move is appended.
DISCARDED_PREFIX = "discarded-"


def set_aside_if_away_too_long(data_dir: DataDir, node_name: str, grace_s: float) -> Path | None:
    """Move the records and the view of a node away longer than the grace out of ``data_dir``
    (locked, not yet read); the directory they went to, or None if they are kept.

    Raises:
        OSError: a file cannot be moved.
    """
    path = data_dir.path
    others = [name for name, entry in saved_view(path / MEMBERS_FILE).items()
              if name != node_name and entry.state != LEFT]
    records = data_dir.table_files()
    if not others or not records:
        return None
    kept = [name for name in (MEMBERS_FILE, READY_STAMP_FILE) if (path / name).exists()]
    now_s = time.time()
    since_s = last_ready_s(path)
    judged_by = "last ready"
    if since_s is None:
        since_s = max(os.stat(path / name).st_mtime for name in records + kept)
        judged_by = "last written (it holds no last-ready time)"
    away_s = now_s - since_s
    if away_s <= grace_s * (1 - PULL_SHARE_OF_GRACE):
        return None
    target = data_dir.set_aside(_free_name(path, now_s), records + kept)
    log.warning("data dir %s: this node was %s %.0f s ago, longer than --tombstone-grace-s %g allows (deletes it "
                "missed may be traced nowhere any more): its %d files are set aside in %s, never read; it starts "
                "empty and joins as a new node", path, judged_by, away_s, grace_s, len(records + kept), target)
    return target


def _free_name(path: Path, now_s: float) -> str:
    """``discarded-20261201T174500Z``, with ``-2``, ``-3``... if that name is taken."""
    name = DISCARDED_PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_s))
    candidate, number = name, 1
    while (path / candidate).exists():
        number += 1
        candidate = f"{name}-{number}"
    return candidate
