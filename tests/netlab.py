"""Test hosts made of network namespaces: one per server, one for clients.

Layout (all names start with ``mlc`` so a stale run is easy to find and
remove): a bridge ``mlcbr0`` in the root namespace holding 10.77.0.1/24 (so
the test process itself is a client on the subnet), and per host a
namespace ``mlc-NAME`` joined to the bridge by a veth pair whose root end is
``mlcv-NAME``. Cutting a host's link sets that root end down.

Needs root and iproute2.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

PREFIX = "mlc"
BRIDGE = "mlcbr0"
SUBNET_PREFIX = "10.77.0."
BRIDGE_ADDRESS = SUBNET_PREFIX + "1"
NETNS_ETC = Path("/etc/netns")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class NetLab:
    """Builds hosts on demand; :meth:`cleanup` removes everything it (or a stale run) made."""

    def __init__(self) -> None:
        self.hosts: dict[str, str] = {}  # name -> address
        self.cleanup()
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", BRIDGE_ADDRESS + "/24", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")

    @staticmethod
    def namespace(name: str) -> str:
        return f"{PREFIX}-{name}"

    def add_host(self, name: str, last_octet: int) -> str:
        """Create host ``name`` at 10.77.0.``last_octet``; returns its address."""
        ns, outer, inner = self.namespace(name), f"mlcv-{name}", f"mlcp-{name}"
        address = f"{SUBNET_PREFIX}{last_octet}"
        ip("netns", "add", ns)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", ns)
        ip("link", "set", outer, "master", BRIDGE)
        ip("link", "set", outer, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", address + "/24", "dev", inner)
        ip("-n", ns, "link", "set", inner, "up")
        self.hosts[name] = address
        return address

    def prefix(self, name: str) -> list[str]:
        """The command prefix that runs a program on host ``name``."""
        return ["ip", "netns", "exec", self.namespace(name)]

    def cut(self, name: str) -> None:
        """Unplug host ``name``: its packets go nowhere (processes keep running)."""
        ip("link", "set", f"mlcv-{name}", "down")

    def plug(self, name: str) -> None:
        ip("link", "set", f"mlcv-{name}", "up")

    def hosts_file(self, name: str, text: str) -> None:
        """Give host ``name`` its own /etc/hosts (``ip netns exec`` mounts it over the real one)."""
        folder = NETNS_ETC / self.namespace(name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts").write_text(text)

    def cleanup(self) -> None:
        listed = ip("netns", "list", check=False).stdout.split("\n")
        for line in listed:
            ns = line.split(" ")[0]
            if ns.startswith(PREFIX + "-"):
                ip("netns", "delete", ns, check=False)
                folder = NETNS_ETC / ns
                if folder.is_dir():
                    for item in folder.iterdir():
                        item.unlink()
                    folder.rmdir()
        for line in ip("-o", "link", "show", check=False).stdout.splitlines():
            link = line.split(":")[1].strip().split("@")[0]
            if link == BRIDGE or link.startswith("mlcv-"):
                ip("link", "delete", link, check=False)
        if NETNS_ETC.is_dir():
            for folder in NETNS_ETC.glob(PREFIX + "-*"):
                for item in folder.iterdir():
                    item.unlink()
                folder.rmdir()


def build_lab(hosts: dict[str, int]) -> Iterator[NetLab]:
    """A fixture body: a lab with ``hosts`` (name -> last octet), always removed afterwards."""
    lab = NetLab()
    try:
        for name, octet in hosts.items():
            lab.add_host(name, octet)
        yield lab
    finally:
        lab.cleanup()
