"""A node back in its cluster after longer than the tombstone grace sets its data aside and joins as a new node.

A delete leaves a tombstone for ``--tombstone-grace-s``; after that the
nodes that hold it collect it. A node that was away for longer may still
hold a value of a key deleted meanwhile, whose delete is now traced nowhere:
served, or pulled by the others' reads, that value would outvote nothing and
come back. Cassandra asks the operator to wipe such a node before it
returns (``gc_grace_seconds``); this node does it itself, at start, before
its data dir is read, when all of these hold:

* **It is a member of a cluster**: started with ``--join``, its kept view
  names another member that has not left, and it holds records. A node
  alone holds the only copy of its data, and keeps it.
* **It was away longer than the grace** less :data:`PULL_SHARE_OF_GRACE` of
  it (left for its join to pull what it missed before the tombstones it
  needs are collected). Away since it was last ready: kept in the data dir
  (``last-ready``, written by the membership thread while the node is ready
  and as it stops: server/membership.py). While a node is ready, the
  cluster's writes and deletes reach it, since it owns keys, so its records
  are current up to then; a node that left, or stopped while still joining,
  is not. A data dir without that file (kept by an earlier release) is
  judged by the newest modification time of its files.
* **Another member may have collected a delete it missed**: one of them
  (its ``--join`` seeds and the members of its view, asked with ``node``)
  answers that it has been up since before the grace's cut-off, or that it
  loaded records newer than this node's last-ready time from its own data
  dir. When the whole cluster was stopped together and is started again,
  no member ran meanwhile and none holds newer records: every node keeps its
  data. When no member answers, the node cannot tell, and keeps it (it may
  hold the only copy; its join then starts a cluster, as it would anyway).

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
from typing import Any

from common.membership import LEFT
from server.datadir import DataDir
from server.membership import MEMBERS_FILE, READY_STAMP_FILE, last_ready_s, saved_view

log = logging.getLogger(__name__)

#: The share of ``--tombstone-grace-s`` left for a returning node's join to
#: pull what it missed: a node away longer than the rest sets its records aside.
PULL_SHARE_OF_GRACE = 0.1

#: How long each member has to answer ``node`` (only asked by a node away longer than the grace).
ASK_TIMEOUT_S = 0.5

#: The name of the directory the records are moved to; the UTC time of the move is appended.
DISCARDED_PREFIX = "discarded-"


def set_aside_if_away_too_long(data_dir: DataDir, node_name: str, grace_s: float, seeds: list[str],
                               server_key: str | None = None, client_key: str | None = None) -> Path | None:
    """Move the records and the view of a node away longer than the grace out of ``data_dir``
    (locked, not yet read); the directory they went to, or None if they are kept.

    ``seeds`` (``--join``) and the members of the kept view are asked
    whether they may have collected a delete this node missed;
    ``server_key`` and ``client_key`` are how to reach them with CURVE.

    Raises:
        OSError: a file cannot be moved.
    """
    path = data_dir.path
    others = {name: entry.address for name, entry in saved_view(path / MEMBERS_FILE).items()
              if name != node_name and entry.state != LEFT}
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
    cutoff_s = now_s - grace_s * (1 - PULL_SHARE_OF_GRACE)
    if since_s >= cutoff_s:
        return None
    answers = []
    for address in dict.fromkeys([*seeds, *others.values()]):
        answer = _ask_node(address, server_key, client_key)
        if answer is not None and answer.get("name") != node_name:
            answers.append(answer)
    newer = [str(answer.get("name")) for answer in answers if _may_have_collected(answer, since_s, cutoff_s)]
    away_s = now_s - since_s
    if not newer:
        log.info("data dir %s: this node was %s %.0f s ago, longer than --tombstone-grace-s %g, but %s: its "
                 "records are kept", path, judged_by, away_s, grace_s,
                 "no other member answered" if not answers else "no member ran or wrote since")
        return None
    target = data_dir.set_aside(_free_name(path, now_s), records + kept)
    log.warning("data dir %s: this node was %s %.0f s ago, longer than --tombstone-grace-s %g allows, and %s ran "
                "or wrote since (deletes it missed may be traced nowhere any more): its %d files are set aside in "
                "%s, never read; it starts empty and joins as a new node", path, judged_by, away_s, grace_s,
                ", ".join(sorted(newer)), len(records + kept), target)
    return target


def _may_have_collected(answer: dict[str, Any], since_s: float, cutoff_s: float) -> bool:
    """Whether the member that gave ``answer`` (to ``node``) may have collected the tombstone of a
    delete made after ``since_s``: it has been up since before ``cutoff_s``, or it loaded newer records."""
    up_since_ms, loaded_until_ms = answer.get("up_since_ms"), answer.get("loaded_until_ms")
    if not isinstance(up_since_ms, int) or not isinstance(loaded_until_ms, int):
        return True  # a node of an earlier release: it may have
    return up_since_ms <= cutoff_s * 1000 or loaded_until_ms > since_s * 1000


def _ask_node(address: str, server_key: str | None, client_key: str | None) -> dict[str, Any] | None:
    """``address``'s answer to ``node``; None if it does not answer (or is this node, not listening yet)."""
    from client.client import Client  # only a node back from far asks
    from client.membership import NODE
    from common.errors import MemlookupError

    try:
        with Client(address, timeout_s=ASK_TIMEOUT_S, retries=0, server_key=server_key,
                    client_key=client_key or server_key) as client:
            answer = client._execute(NODE)
    except (MemlookupError, ValueError) as exc:  # down, refused, or its name does not resolve
        log.debug("%s did not answer node: %s", address, exc)
        return None
    return answer if isinstance(answer, dict) else None


def _free_name(path: Path, now_s: float) -> str:
    """``discarded-20261201T174500Z``, with ``-2``, ``-3``... if that name is taken."""
    name = DISCARDED_PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_s))
    candidate, number = name, 1
    while (path / candidate).exists():
        number += 1
        candidate = f"{name}-{number}"
    return candidate
