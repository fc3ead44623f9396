"""The thread that keeps this node's membership view current: it joins the cluster, then gossips.

The request loop is single-threaded and must never wait on another node, so
everything that asks other nodes runs here, with sockets of its own (a
:class:`client.Client` per peer, short timeouts, no retries: a peer that does
not answer is asked again at the next round):

* at start, the seeds' views are merged (``members``), then this node
  announces itself ready to every member (``announce``);
* every :data:`~common.membership.GOSSIP_INTERVAL_S`, one member picked at
  random is asked for its view, which is merged; the entries it lacks or
  holds older are announced to it (push-pull), so a missed announcement heals
  within a few rounds; the view is then saved if it changed.

A member whose address does not resolve (a stopped container leaves the
DNS) counts as down, not as an error.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

from client.client import Client
from client.membership import ANNOUNCE, MEMBERS
from client.requests import Command
from common.errors import MemlookupError, NodeUnavailableError
from common.membership import GOSSIP_INTERVAL_S, READY, Entry, parse_entries
from server.membership import MemberView, now_ms

log = logging.getLogger(__name__)

#: How long a peer has to answer one request of this thread.
PEER_TIMEOUT_S = 0.5

#: How long stopping the server waits for this thread (it is a daemon: it
#: never holds up the exit; an unanswered request ends within PEER_TIMEOUT_S).
STOP_WAIT_S = 0.2


class MembershipThread:
    """Joins the cluster through ``seeds``, then gossips until stopped.

    Args:
        view: this node's view.
        seeds: addresses of nodes of the cluster (``--join``).
        curve_secret_key: the server's key pair: with CURVE, the nodes share
            one, and each connects to the others with it.
    """

    def __init__(self, view: MemberView, seeds: list[str], curve_secret_key: str | None = None) -> None:
        self._view = view
        self._seeds = seeds
        self._curve_secret_key = curve_secret_key
        self._stop = threading.Event()
        self._clients: dict[str, Client] = {}
        self._thread = threading.Thread(target=self._run, name="memlookup-membership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish; it saves the view and closes its sockets as it ends."""
        self._stop.set()
        self._thread.join(STOP_WAIT_S)

    def _run(self) -> None:
        try:
            self._join()
            while not self._stop.wait(GOSSIP_INTERVAL_S):
                self._gossip()
                self._view.save()
        except Exception:
            log.exception("membership thread failed; this node's view is no longer kept current")
        finally:
            self._view.save()
            for client in self._clients.values():
                client.close()

    # -- the procedures --------------------------------------------------------------

    def _join(self) -> None:
        for seed in self._seeds:
            self._pull(seed)
        self._announce(self._view.become(READY))
        log.info("member %s of a cluster of %d, ready", self._view.name, len(self._view.peers()) + 1)

    def _gossip(self) -> None:
        peers = list(self._view.peers().values()) or self._seeds
        if peers:
            self._pull(random.choice(peers), push=True)

    def _pull(self, address: str, push: bool = False) -> None:
        """Merge ``address``'s view into ours; with ``push``, tell it the entries it lacks or holds older."""
        reply = self._ask(address, MEMBERS)
        if reply is None:
            return
        try:
            theirs = parse_entries(reply.get("members") if isinstance(reply, dict) else None, now_ms())
        except ValueError as exc:
            log.warning("ignoring the membership of %s: %s", address, exc)
            return
        if reply.get("replicas") != self._view.replicas:
            log.warning("%s has replicas %s, this node %d: every node of a cluster must have the same",
                        address, reply.get("replicas"), self._view.replicas)
        self._view.merge(theirs)
        if push:
            newer = {name: entry for name, entry in self._view.entries().items()
                     if name not in theirs or theirs[name].version < entry.version}
            if newer:
                self._ask(address, ANNOUNCE, _wire(newer))

    def _announce(self, entries: dict[str, Entry]) -> None:
        """Tell every other member ``entries``."""
        for address in self._view.peers().values():
            self._ask(address, ANNOUNCE, _wire(entries))

    # -- asking another node ---------------------------------------------------------

    def _ask(self, address: str, command: Command[Any], *args: Any) -> Any | None:
        """``command``'s result from the node at ``address``; None if it did not answer or refused."""
        try:
            client = self._clients.get(address)
            if client is None:
                key = self._curve_secret_key
                client = self._clients[address] = Client(address, timeout_s=PEER_TIMEOUT_S, retries=0,
                                                          server_key=key, client_key=key)
            return client._execute(command, *args)
        except NodeUnavailableError:
            # Its address is looked up again next time (a restarted container has a new one).
            dropped = self._clients.pop(address, None)
            if dropped is not None:
                dropped.close()
        except MemlookupError as exc:  # before ValueError: InvalidRequestError is one
            log.warning("%s refused %s: %s", address, command.name, exc)
        except ValueError as exc:  # the address does not resolve: down
            log.debug("%s is down: %s", address, exc)
        return None


def _wire(entries: dict[str, Entry]) -> dict[str, Any]:
    return {name: entry.wire() for name, entry in entries.items()}
