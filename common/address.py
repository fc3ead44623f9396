"""Node addresses: what a user may type, turned into a ZeroMQ endpoint.

Accepted forms: ``host``, ``host:port``, ``tcp://host:port``, ``[ipv6]`` and
``[ipv6]:port``. Hostnames are resolved here, because ZeroMQ's own resolver
does not fall back between IPv4 and IPv6 addresses, and they are resolved
when a connection opens (:func:`resolve_endpoint`), not when they are given:
a container or pod that is recreated keeps its name but not its address, and
a stopped container's name leaves its network's DNS until it is back -- a
node that is down, not a mistake in the command.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections.abc import Iterable

#: The port a server listens on and a client dials when none is given.
DEFAULT_PORT = 7400


def split_node(node: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Return ``(host, port)`` for a node written in any accepted form.

    Raises:
        ValueError: the text is not a node address.
    """
    text = node.strip()
    if text.startswith("tcp://"):
        text = text[len("tcp://"):]
    if not text:
        raise ValueError(f"empty node address {node!r}")
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in node address {node!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"unexpected {rest!r} after ']' in {node!r}")
            port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {node!r} is not an IPv6 address") from None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        # A bare IPv6 address: allowed without brackets only when it has no port.
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError(f"write IPv6 nodes as [address]:port, not {node!r}") from None
        host = text
    else:
        host = text
    if not host:
        raise ValueError(f"no host in node address {node!r}")
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} in {node!r} is not a number from 1 to 65535")
    return host, int(port_text)


def resolve(host: str, timeout_s: float | None = None) -> list[str]:
    """All addresses ``host`` resolves to, IPv4 first, without duplicates.

    With ``timeout_s``, a lookup that has not finished by then gives the
    name's last answer, or counts as a name that does not resolve when there
    was none. A resolver that drops a query (aardvark-dns, the DNS of
    podman's networks, drops queries while it reloads because a container was
    created or removed; Kubernetes' DNS has its own UDP races) leaves glibc
    waiting its own timeout, 5 s a try and several tries, far past a call's.
    The lookup goes on in the background; a later lookup of the same name
    waits for it rather than starting another, unless it has been waiting
    for :data:`LOOKUP_AGAIN_S` (the resolver may be back, and glibc would
    wait out its timeouts before asking again). A name the resolver says
    does not exist has no last answer any more (a stopped container is a
    node down, not its old address).

    Raises:
        ValueError: the name does not resolve (within ``timeout_s``, with no earlier answer).
    """
    lookup = _lookup(host)
    if not lookup.done.wait(timeout_s):
        last = _LAST_ANSWERS.get(host)
        if last is None:
            raise ValueError(f"cannot resolve {host!r}: no answer from the resolver within {timeout_s:g} s")
        return last
    if lookup.addresses is None:
        raise ValueError(f"cannot resolve {host!r}: {lookup.error}")
    return lookup.addresses


class _Lookup:
    """One lookup of a name, in a thread of its own; ``addresses`` or ``error`` once ``done`` is set."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.started = time.monotonic()
        self.done = threading.Event()
        self.addresses: list[str] | None = None
        self.error = ""
        threading.Thread(target=self._run, name=f"lookup {host}", daemon=True).start()

    def _run(self) -> None:
        import socket  # only names need it; a one-shot CLI with an IP address starts faster

        try:
            infos = socket.getaddrinfo(self.host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:  # gaierror, or a name IDNA cannot encode
            with _LOOKUPS_LOCK:
                self._forget()
                if not (isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN):
                    _LAST_ANSWERS.pop(self.host, None)  # the resolver answered: no such name
                # Else the resolver did not answer (glibc gave up on it first): the last answer stands.
                self.addresses = _LAST_ANSWERS.get(self.host)
            self.error = getattr(exc, "strerror", None) or str(exc)
            self.done.set()
            return
        seen: dict[str, int] = {}
        for family, _, _, _, sockaddr in infos:
            address = sockaddr[0]
            if isinstance(address, str):  # not (int, bytes): IPv6 in a Python built without it, cannot dial it
                seen.setdefault(address, 0 if family == socket.AF_INET else 1)
        with _LOOKUPS_LOCK:
            self._forget()
            self.addresses = _LAST_ANSWERS[self.host] = sorted(seen, key=seen.__getitem__)
        self.done.set()

    def _forget(self) -> None:
        """No longer the lookup under way of its name, if it still was (call with the lock held)."""
        if _LOOKUPS.get(self.host) is self:
            del _LOOKUPS[self.host]


def _lookup(host: str) -> _Lookup:
    """The lookup of ``host`` under way, or a new one."""
    with _LOOKUPS_LOCK:
        lookup = _LOOKUPS.get(host)
        if lookup is None or time.monotonic() - lookup.started > LOOKUP_AGAIN_S:
            lookup = _LOOKUPS[host] = _Lookup(host)
    return lookup


#: After this long unanswered, a lookup of a name is started again beside the one under way.
LOOKUP_AGAIN_S = 1.0
#: The latest lookup under way of each name.
_LOOKUPS: dict[str, _Lookup] = {}
#: Each name's last answer, given when the resolver does not answer in time.
_LAST_ANSWERS: dict[str, list[str]] = {}
_LOOKUPS_LOCK = threading.Lock()
# A forked child has none of its parent's lookup threads: it starts its own.
os.register_at_fork(after_in_child=_LOOKUPS.clear)


def endpoint(host: str, port: int) -> str:
    """The ZeroMQ ``tcp://`` endpoint for an address (IPv6 in brackets)."""
    if ":" in host:
        return f"tcp://[{host}]:{port}"
    return f"tcp://{host}:{port}"


def _addresses(host: str, timeout_s: float | None = None) -> list[str]:
    """``[host]`` for an IP address, else every address the name resolves to now.

    Raises:
        ValueError: the name does not resolve (within ``timeout_s``).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return resolve(host, timeout_s)
    return [host]


def node_endpoints(node: str, default_port: int = DEFAULT_PORT) -> list[str]:
    """Every ``tcp://`` endpoint a node address stands for (a name may have several).

    Raises:
        ValueError: ``node`` is not an address, or its name does not resolve.
    """
    host, port = split_node(node, default_port)
    return [endpoint(address, port) for address in _addresses(host)]


def resolve_endpoint(zmq_endpoint: str, timeout_s: float | None = None) -> str:
    """``tcp://host:port`` with a host name replaced by its first address now (IPv4 first).

    Called each time a client opens a connection, so a node whose address
    changed under the same name is found at its new one; ``timeout_s`` is the
    client's, so that a resolver that does not answer delays a call no more
    than a node that does not answer (:func:`resolve`).

    Raises:
        ValueError: the name does not resolve (now, within ``timeout_s``).
    """
    host, port = split_node(zmq_endpoint)
    return endpoint(_addresses(host, timeout_s)[0], port)


def expand_nodes(nodes: str | Iterable[str], default_port: int = DEFAULT_PORT) -> list[str]:
    """Member names (``host:port``) for what a user typed.

    ``nodes`` is a list of node addresses or one comma-separated string. A
    name with one address keeps its name (so a member keeps its place when
    its address changes, as a Kubernetes pod's does on restart), and so does
    a name that does not resolve now: that member is down (a stopped
    container's name leaves its network's DNS) and is looked up again each
    time a connection to it opens. A name that resolves to several addresses
    (a Kubernetes headless Service) stands for all of them, each named by
    its address. Duplicates are dropped.

    Raises:
        ValueError: a node is not an address, or none is given.
    """
    parts = nodes.split(",") if isinstance(nodes, str) else list(nodes)
    names: dict[str, None] = {}
    for part in parts:
        if not part.strip():
            continue
        host, port = split_node(part, default_port)
        try:
            addresses = _addresses(host)
        except ValueError:
            addresses = []
        if len(addresses) <= 1:
            names[endpoint(host, port)[len("tcp://"):]] = None
            continue
        for address in addresses:
            names[endpoint(address, port)[len("tcp://"):]] = None
    if not names:
        raise ValueError("no nodes given")
    return list(names)
