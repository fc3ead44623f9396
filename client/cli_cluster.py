"""The command line's multi-node part: which client to open, and rebalance's progress bar."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from common.address import expand_nodes

if TYPE_CHECKING:  # imported when used: a one-shot command starts faster
    from client.client import Client
    from client.cluster import ClusterClient


def open_table(
    node: str, replicas: int, timeout_s: float, retries: int, leaving: str | None = None,
    server_key: str | None = None, client_key: str | None = None,
) -> Client | ClusterClient:
    """A plain :class:`Client` for one node, a :class:`ClusterClient` for several (or with ``leaving`` nodes).

    Raises:
        ValueError: a node is not an address, or R < 1.
    """
    names = expand_nodes(node)
    if len(names) == 1 and not leaving:
        from client.client import Client

        # One command: a node that refuses the connection is a mistake to report at once, not to wait out.
        return Client(names[0], timeout_s=timeout_s, retries=retries, server_key=server_key, client_key=client_key,
                      wait_for_ready=False)
    from client.cluster import ClusterClient

    return ClusterClient(names, replicas=replicas, timeout_s=timeout_s, retries=retries, leaving=leaving or (),
                         server_key=server_key, client_key=client_key)


def cluster_rebalance(table: ClusterClient) -> dict[str, Any]:
    """Run :func:`client.rebalance.rebalance` with a progress bar on a terminal's stderr."""
    from tqdm import tqdm

    from client.rebalance import rebalance, total_copies

    with tqdm(total=total_copies(table), unit="key", desc="rebalance", file=sys.stderr, disable=None) as bar:

        def advance(examined: int) -> None:
            # Copies placed on a node not scanned yet are examined there too.
            if bar.total is not None and bar.n + examined > bar.total:
                bar.total = bar.n + examined
            bar.update(examined)

        report = rebalance(table, progress=advance)
    from dataclasses import asdict  # here: dataclasses costs a one-shot command ~15 ms

    return asdict(report)
