"""Who may talk to this server: the access policy, with no sockets.

Two questions decide every new connection (ZeroMQ asks them through ZAP, see
:mod:`server.zap`, once per connection, never per request):

* **Where from?** Without keys the server is in *protected mode*, like
  Redis: it answers loopback peers only, unless the operator names more
  networks (``--allow``) or gives up the check (``--insecure-allow-all``).
  With keys, any address may connect unless ``--allow`` narrows it.
* **Who?** With ``--curve-secret-key`` every connection is CurveZMQ
  encrypted, and with ``--authorized-keys DIR`` only the clients whose public
  keys are in ``DIR`` get in. The directory is re-read when it changes, so a
  client can be added or removed without a restart.

Refusals are logged, at most :data:`REFUSAL_LOG_BURST` lines per
:data:`REFUSAL_LOG_WINDOW_S`, so a hostile peer cannot flood the log.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import zmq.utils.z85

from common.keys import load_authorized_keys

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The networks protected mode lets in.
LOOPBACK_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)

#: At most this many refusal lines per window; the rest are counted.
REFUSAL_LOG_BURST = 10
REFUSAL_LOG_WINDOW_S = 10.0

#: How often, at most, the authorized keys directory is checked for changes.
KEYS_RECHECK_S = 1.0


def parse_networks(texts: Iterable[str]) -> list[Network]:
    """``--allow`` values (addresses or CIDR networks, comma separated) as networks.

    Raises:
        ValueError: a value is neither an address nor a network.
    """
    networks: list[Network] = []
    for text in texts:
        for item in str(text).replace(",", " ").split():
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"--allow {item!r} is not an IP address or network (like 10.0.0.0/8)") from None
    return networks


class RateLimitedLog:
    """Logs at most ``burst`` messages per ``window_s``; counts the rest.

    When a window with suppressed messages ends, the next message says how
    many ``what`` were left out.
    """

    def __init__(self, logger: logging.Logger, burst: int = REFUSAL_LOG_BURST,
                 window_s: float = REFUSAL_LOG_WINDOW_S, clock: Callable[[], float] = time.monotonic,
                 what: str = "refusals") -> None:
        self._logger, self._burst, self._window_s, self._clock = logger, burst, window_s, clock
        self._what = what
        self._window_start = -window_s
        self._logged = 0
        self.suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now - self._window_start >= self._window_s:
            if self.suppressed:
                self._logger.warning("%d more %s were not logged", self.suppressed, self._what)
            self._window_start, self._logged, self.suppressed = now, 0, 0
        if self._logged < self._burst:
            self._logged += 1
            self._logger.warning(message, *args)
        else:
            self.suppressed += 1


class AccessPolicy:
    """Decides whether a new connection is let in.

    Args:
        allowed: networks peers may come from; None means any address.
        keys_dir: directory of authorized client ``*.key`` files; None means
            no client key check (with CURVE: any client key is accepted).
        clock: monotonic seconds (for the log rate limit and key reloads).
        curve: connections are CurveZMQ encrypted (only changes :meth:`describe`).
    """

    def __init__(self, allowed: list[Network] | None, keys_dir: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] = time.monotonic, curve: bool = False) -> None:
        self.allowed = allowed
        self.curve = curve
        self.keys_dir = Path(keys_dir) if keys_dir is not None else None
        self._clock = clock
        self._keys: set[bytes] = set()
        self._keys_stamp: frozenset[tuple[str, int, int]] | None = None
        self._keys_checked = -KEYS_RECHECK_S
        self._refusal_log = RateLimitedLog(log, clock=clock)
        self.accepted = 0
        self.refused = 0
        if self.keys_dir is not None:
            self._reload_keys(force=True)

    @classmethod
    def build(cls, allow: list[str], allow_all: bool, curve: bool,
              keys_dir: str | os.PathLike[str] | None) -> AccessPolicy:
        """The policy for the server's flags (see the module docstring)."""
        networks = parse_networks(allow)
        if allow_all:
            allowed = None
        elif networks:
            allowed = [*LOOPBACK_NETWORKS, *networks]
        else:
            allowed = None if curve else list(LOOPBACK_NETWORKS)
        return cls(allowed, keys_dir, curve=curve)

    def describe(self) -> str:
        """One line for the start-up log saying who may connect."""
        if self.allowed is None:
            where = "any address"
        elif list(self.allowed) == list(LOOPBACK_NETWORKS):
            where = "loopback peers only (protected mode; --allow NETWORK or keys let others in)"
        else:
            where = "addresses in " + ", ".join(str(n) for n in self.allowed)
        if self.keys_dir is not None:
            who = f"with one of {len(self._keys)} client keys in {self.keys_dir}"
        elif self.curve:
            who = "encrypted, with any client key (no --authorized-keys)"
        else:
            who = "without authentication"
        return f"accepting {where}, {who}"

    def decide(self, address: str, mechanism: str, credentials: list[bytes]) -> tuple[bool, str]:
        """``(allowed, reason)`` for a peer at ``address`` using ``mechanism``.

        ``address`` is the peer's IP address as ZAP gives it; ``credentials``
        holds the client's public key (32 raw bytes) for CURVE.
        """
        allowed, reason = self._check(address, mechanism, credentials)
        if allowed:
            self.accepted += 1
        else:
            self.refused += 1
            self._refusal_log.warning("refused a connection from %s: %s", address or "?", reason)
        return allowed, reason

    def handshake_failed(self, reason: str) -> None:
        """A connection failed before it could be asked about (ZeroMQ gives no address)."""
        self.refused += 1
        self._refusal_log.warning("refused a connection: %s", reason)

    def _check(self, address: str, mechanism: str, credentials: list[bytes]) -> tuple[bool, str]:
        if self.allowed is not None and not self._address_allowed(address):
            return False, "address not allowed" + (
                " (protected mode: start the server with --allow or keys to let it in)"
                if self.allowed == list(LOOPBACK_NETWORKS) else "")
        if self.keys_dir is not None:
            if mechanism != "CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
                return False, "no client key"
            try:
                key = zmq.utils.z85.encode(credentials[0])
            except ValueError:
                return False, "malformed client key"
            self._reload_keys()
            if key not in self._keys:
                return False, "client key not authorized"
        return True, "OK"

    def _address_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.allowed or ())

    def _reload_keys(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._keys_checked < KEYS_RECHECK_S:
            return
        self._keys_checked = now
        assert self.keys_dir is not None
        try:
            stamp = _directory_stamp(self.keys_dir)
            if stamp == self._keys_stamp and not force:
                return
            keys = load_authorized_keys(self.keys_dir)
        except (OSError, ValueError) as exc:
            if force:
                if isinstance(exc, OSError):
                    raise ValueError(f"authorized keys directory {str(self.keys_dir)!r} does not exist "
                                     f"or cannot be read: {exc.strerror}") from None
                raise
            log.error("cannot reload authorized keys, keeping the %d loaded: %s", len(self._keys), exc)
            return
        if self._keys_stamp is not None:
            log.info("authorized keys reloaded from %s: %d keys", self.keys_dir, len(keys))
        self._keys, self._keys_stamp = keys, stamp

    def stats(self) -> dict[str, object]:
        """The ``auth`` section of ``stats``."""
        return {
            "curve": self.curve,
            "curve_keys": len(self._keys) if self.keys_dir is not None else None,
            "accepted_connections": self.accepted,
            "refused_connections": self.refused,
        }



def _directory_stamp(directory: Path) -> frozenset[tuple[str, int, int]]:
    """Name, size and mtime of every ``*.key`` file: changes when any key is added,
    removed or rewritten in place (which leaves the directory's own mtime alone)."""
    with os.scandir(directory) as entries:
        return frozenset((entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
                         for entry in entries if entry.name.endswith(".key"))
