"""The thread that keeps this node's membership current: it joins the cluster, gossips, and leaves it.

The request loop is single-threaded and must never wait on another node, so
everything that asks other nodes runs here, with sockets of its own (a
:class:`client.Client` per peer, short timeouts, no retries: a peer that does
not answer is asked again at the next round). Records reach this node's own
table the way any client's do, by requests to its own port, so the loop
applies, journals and memory-checks them like every other write.

* **Join**, at start: the seeds' views are merged (``members``). If no seed
  answers, or no other member is known, this node starts a cluster: it is
  ready at once. Otherwise it announces itself ``joining`` to every member
  (clients then write its keys to it too), waits :data:`SETTLE_S` for every
  client to have seen that, pulls from every other member the records it
  owns on the new write ring (``scanv``, applied to itself with ``putv``:
  newer wins, tombstones apply, so a node returning with old data catches up
  on what it missed) and announces itself ``ready``.
* **Gossip**, every :data:`GOSSIP_INTERVAL_S`: ``left`` entries older than
  the tombstone grace are forgotten; one member picked at random is asked
  for its view, which is merged; the entries it lacks or holds older are
  announced to it (push-pull), so a missed announcement heals within a few
  rounds; the view is then saved if it changed.
* **Leave**, when the ``leave`` op asks: announce ``leaving``, wait
  :data:`SETTLE_S` (clients stop making this node an owner of new writes,
  but still read it), push every record this node holds to its owners on
  the ring without it (``putv``), announce ``left``. If an owner does not
  take its records, the node stays ``leaving`` and says why; ``leave``
  again retries.

A member whose address does not resolve (a stopped container leaves the
DNS) counts as down, not as an error.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from client.client import Client
from client.membership import ANNOUNCE, MEMBERS, PUTV, SCANV
from client.requests import Command
from common.errors import AuthenticationError, MemlookupError, NodeUnavailableError
from common.limits import MAX_BATCH_KEYS
from common.membership import (
    GOSSIP_INTERVAL_S,
    JOINING,
    LEAVING,
    LEFT,
    READY,
    SETTLE_S,
    WRITE_STATES,
    Entry,
    Rings,
    parse_entries,
)
from server.membership import MemberView, now_ms

log = logging.getLogger(__name__)

#: How long a peer has to answer one request of this thread.
PEER_TIMEOUT_S = 0.5

#: How long a node has to answer a page of ``scanv`` or ``putv``: pages of up
#: to MAX_BATCH_KEYS records, journaled, take longer than a gossip round.
MOVE_TIMEOUT_S = 10.0

#: Records asked for per ``scanv`` page.
SCAN_PAGE = 1000

#: How long stopping the server waits for this thread (it is a daemon: it
#: never holds up the exit; an unanswered request ends within PEER_TIMEOUT_S).
STOP_WAIT_S = 0.2


class MembershipThread:
    """Joins the cluster through ``seeds``, then gossips until stopped.

    Args:
        view: this node's view.
        seeds: addresses of nodes of the cluster (``--join``).
        local: this node's own ``host:port`` on loopback (records it pulls are sent there).
        server_key: the server's key pair (``--curve-secret-key``): with CURVE
            the nodes share one, as cluster clients expect, so it is also the
            key this node checks the others by.
        client_key: the key pair this node is known by as a client of the
            others and of itself (``--client-key``); None: ``server_key``'s.
    """

    def __init__(self, view: MemberView, seeds: list[str], local: str, server_key: str | None = None,
                 client_key: str | None = None) -> None:
        self._view = view
        self._seeds = seeds
        self._local = local
        self._server_key = server_key
        self._client_key = client_key or server_key
        self._stop = threading.Event()
        self._clients: dict[tuple[str, float], Client] = {}  # by address and timeout
        self._thread = threading.Thread(target=self._run, name="memlookup-membership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish (it closes its sockets as it ends), and keep the view."""
        self._stop.set()
        self._thread.join(STOP_WAIT_S)
        self._view.save(stopping=True)

    def _run(self) -> None:
        view = self._view
        try:
            self._join()
            while not self._stop.is_set():
                if view.leave_requested.wait(GOSSIP_INTERVAL_S) and view.state != LEFT:
                    self._leave()
                    view.leave_requested.clear()
                self._gossip()
                view.save()
        except Exception:
            log.exception("membership thread failed; this node's view is no longer kept current")
        finally:
            for client in self._clients.values():
                client.close()

    # -- the procedures --------------------------------------------------------------

    def _join(self) -> None:
        view = self._view
        answered = [seed for seed in self._seeds if self._pull(seed)]
        if not answered or not view.peers():
            self._announce(view.become(READY))
            log.info("%s starts a cluster (no seed answered or none knows another member): ready", view.name)
            return
        self._announce(view.become(JOINING))
        log.info("%s joining a cluster of %d; moving keys in %.1f s", view.name, len(view.peers()) + 1, SETTLE_S)
        if self._stop.wait(SETTLE_S):
            return
        while True:
            rings = Rings(view.entries(), view.replicas)
            try:
                pulled = sum(self._move(address, rings.write.owners) for address in view.peers().values())
                break
            except _MoveFailed as exc:
                log.warning("%s cannot become ready yet: %s", view.name, exc)
                if self._stop.wait(GOSSIP_INTERVAL_S):
                    return
        self._announce(view.become(READY))
        log.info("%s ready: %d records pulled from %d members", view.name, pulled, len(view.peers()))

    def _leave(self) -> None:
        view = self._view
        if view.state != LEAVING:
            self._announce(view.become(LEAVING))
            log.info("%s leaving; moving keys in %.1f s", view.name, SETTLE_S)
            if self._stop.wait(SETTLE_S):
                return
        others = {name: entry for name, entry in view.entries().items() if name != view.name}
        if not any(entry.state in WRITE_STATES for entry in others.values()):
            view.leave_error = "no other member owns keys: this node's records have nowhere to go"
            return
        rings = Rings(others, view.replicas)
        addresses = view.peers()
        view.leave_error = None
        try:
            view.pushed = self._push(rings, addresses)
        except _MoveFailed as exc:
            view.leave_error = str(exc)
            log.warning("%s cannot leave yet: %s", view.name, exc)
            return
        self._announce(view.become(LEFT))
        log.info("%s left: %d records pushed to their owners", view.name, view.pushed)

    def _gossip(self) -> None:
        for name in self._view.forget_left():
            log.info("forgot %s: it left longer than --tombstone-grace-s ago", name)
        peers = list(self._view.peers().values()) or self._seeds
        if peers:
            self._pull(random.choice(peers), push=True)

    def _pull(self, address: str, push: bool = False) -> bool:
        """Merge ``address``'s view into ours; with ``push``, tell it the entries it lacks or holds older.
        False if it did not answer."""
        reply = self._ask(address, MEMBERS)
        if reply is None:
            return False
        try:
            theirs = parse_entries(reply.get("members") if isinstance(reply, dict) else None, now_ms())
        except ValueError as exc:
            log.warning("ignoring the membership of %s: %s", address, exc)
            return False
        if reply.get("replicas") != self._view.replicas:
            log.warning("%s has replicas %s, this node %d: every node of a cluster must have the same",
                        address, reply.get("replicas"), self._view.replicas)
        self._view.merge(theirs)
        if push:
            newer = {name: entry for name, entry in self._view.entries().items()
                     if name not in theirs or theirs[name].version < entry.version}
            if newer:
                self._ask(address, ANNOUNCE, _wire(newer))
        return True

    def _announce(self, entries: dict[str, Entry]) -> None:
        """Keep the view (this node's own state changed), and tell every other member ``entries``."""
        self._view.save()
        for address in self._view.peers().values():
            self._ask(address, ANNOUNCE, _wire(entries))

    # -- moving records --------------------------------------------------------------

    def _move(self, source: str, owners: Callable[[str], list[str]]) -> int:
        """Copy the records of ``source`` whose ``owners`` include this node to it (write-if-newer);
        how many. A source that does not answer is skipped: the others hold copies.

        Raises:
            _MoveFailed: this node did not take them.
        """
        moved, cursor = 0, 0
        while True:
            page = self._ask(source, SCANV, cursor, SCAN_PAGE, timeout_s=MOVE_TIMEOUT_S)
            if page is None:
                log.warning("could not pull records from %s; its copies elsewhere are pulled instead", source)
                return moved
            cursor, records = page
            mine = [record for record in records if self._view.name in owners(record[0])]
            if mine:
                if self._ask(self._local, PUTV, mine, timeout_s=MOVE_TIMEOUT_S) is None:
                    raise _MoveFailed("this node did not take the records it pulled")
                moved += len(mine)
            if not cursor:
                return moved

    def _push(self, rings: Rings, addresses: dict[str, str]) -> int:
        """Send every record this node holds to its owners on ``rings``; how many records.

        Raises:
            _MoveFailed: an owner did not take its records.
        """
        pushed, cursor = 0, 0
        while True:
            page = self._ask(self._local, SCANV, cursor, SCAN_PAGE, timeout_s=MOVE_TIMEOUT_S)
            if page is None:
                raise _MoveFailed("this node did not answer its own scanv")
            cursor, records = page
            by_owner: dict[str, list[Any]] = {}
            for record in records:
                for owner in rings.write.owners(record[0]):
                    by_owner.setdefault(owner, []).append(record)
            for owner, share in by_owner.items():
                for start in range(0, len(share), MAX_BATCH_KEYS):
                    chunk = share[start:start + MAX_BATCH_KEYS]
                    if owner not in addresses or self._ask(addresses[owner], PUTV, chunk,
                                                           timeout_s=MOVE_TIMEOUT_S) is None:
                        raise _MoveFailed(f"{owner} did not take its records")
            pushed += len(records)
            if not cursor:
                return pushed

    # -- asking another node ---------------------------------------------------------

    def _ask(self, address: str, command: Command[Any], *args: Any, timeout_s: float = PEER_TIMEOUT_S) -> Any | None:
        """``command``'s result from the node at ``address``; None if it did not answer or refused."""
        try:
            client = self._clients.get((address, timeout_s))
            if client is None:
                client = self._clients[address, timeout_s] = Client(
                    address, timeout_s=timeout_s, retries=0, server_key=self._server_key,
                    client_key=self._client_key)
            return client._execute(command, *args)
        except AuthenticationError as exc:
            log.warning("%s refused this node: %s", address, exc)
            self._forget(address, timeout_s)
        except NodeUnavailableError:
            self._forget(address, timeout_s)
        except MemlookupError as exc:  # before ValueError: InvalidRequestError is one
            log.warning("%s refused %s: %s", address, command.name, exc)
        except ValueError as exc:  # the address does not resolve: down
            log.debug("%s is down: %s", address, exc)
        return None

    def _forget(self, address: str, timeout_s: float) -> None:
        """Close the client of a node that did not answer: its address is looked up again next
        time (a restarted container has a new one)."""
        dropped = self._clients.pop((address, timeout_s), None)
        if dropped is not None:
            dropped.close()


class _MoveFailed(Exception):
    """A node did not take the records it was sent, or did not send them."""


def _wire(entries: dict[str, Entry]) -> dict[str, Any]:
    return {name: entry.wire() for name, entry in entries.items()}
