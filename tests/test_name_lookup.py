"""Node names are looked up when a connection opens, not when they are given.

A container or pod recreated under the same name comes back with a new
address, and a stopped container's name leaves its network's DNS until it is
back: a node that is down, not a mistake in the command. The second test
changes what a name resolves to as Compose's DNS does, with a hosts file of
its own bind-mounted over /etc/hosts for the client process alone (``unshare
--mount``, as ``ip netns exec`` does for /etc/netns; needs root).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client import Client, ClusterClient, NodeUnavailableError
from common.address import LOOKUP_AGAIN_S, expand_nodes
from common.placement import Placement
from tests.servers import ROOT, ServerProcess, run_cli

GONE = "nosuchnode.invalid"  # .invalid never resolves (RFC 2606)


def test_a_member_whose_name_does_not_resolve_is_a_node_down(start_server: Callable[..., ServerProcess]) -> None:
    servers = [start_server() for _ in range(3)]
    nodes = [s.node for s in servers] + [f"{GONE}:7400"]
    assert expand_nodes(",".join(nodes)) == nodes  # a member, by its name, like the others
    keys = [f"k{i}" for i in range(200)]
    placement = Placement(nodes, 2)
    theirs = [key for key in keys if f"{GONE}:7400" in placement.owners(key)]
    assert theirs  # keys it would hold: each has its other copy on a live node

    with ClusterClient(nodes, replicas=2, timeout_s=1.0, retries=1) as table:
        started = time.monotonic()
        table.mset({key: f"v-{key}" for key in keys})
        assert time.monotonic() - started < 1.0  # failing to resolve is not waited out like a silent node
        assert table.mget(keys) == [f"v-{key}" for key in keys]
        assert table.health() == {**{s.node: True for s in servers}, f"{GONE}:7400": False}

    listed = ",".join(nodes)
    assert run_cli(listed, "set", theirs[0], "again").returncode == 0
    got = run_cli(listed, "get", theirs[0])
    assert (got.returncode, got.stdout) == (0, "again\n"), got.stderr
    ping = run_cli(listed, "ping")
    assert ping.returncode == 4 and f"no reply from {GONE}:7400" in ping.stderr


def test_one_node_whose_name_does_not_resolve_is_unavailable_not_a_usage_error() -> None:
    with Client(GONE, timeout_s=5.0, retries=2) as table:  # not looked up yet: no error
        started = time.monotonic()
        with pytest.raises(NodeUnavailableError, match=f"cannot resolve '{GONE}'"):
            table.ping()
        assert time.monotonic() - started < 5.0  # at once, not after the timeout
    got = run_cli(GONE, "get", "k")
    assert got.returncode == 4 and f"cannot resolve '{GONE}'" in got.stderr
    assert run_cli(f"{GONE}:http", "get", "k").returncode == 2  # not an address at all: a usage error


#: A long-lived client in its own mount namespace: one ``get k`` per line read, the value or why not.
_CLIENT = """
import sys
from client import Client, NodeUnavailableError
table = Client(sys.argv[1], timeout_s=0.5, retries=1)
for _ in sys.stdin:
    try:
        print(table.get("k"), flush=True)
    except NodeUnavailableError as exc:
        print("unavailable:", exc, flush=True)
"""


class NamedClient:
    """A client process whose /etc/hosts is ``hosts``, which the test rewrites in place."""

    def __init__(self, hosts: Path, node: str) -> None:
        self.hosts = hosts
        self.name("")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts),
             sys.executable, "-c", _CLIENT, node],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def name(self, address: str) -> None:
        """``mover`` resolves to ``address`` from now on (to nothing when empty)."""
        line = f"{address} mover\n" if address else ""
        with self.hosts.open("r+") as hosts:  # in place: the bind mount holds this inode
            hosts.truncate()
            hosts.write("127.0.0.1 localhost\n" + line)

    def get(self) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("get\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, self.proc.stderr.read() if self.proc.stderr else ""
        return answer.strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def named_client(tmp_path: Path) -> Iterator[Callable[[str], NamedClient]]:
    made: list[NamedClient] = []
    hosts = tmp_path / "hosts"
    hosts.touch()

    def make(node: str) -> NamedClient:
        made.append(NamedClient(hosts, node))
        return made[-1]

    yield make
    for client in made:
        client.close()


def serve(start_server: Callable[..., ServerProcess], address: str, port: int, value: str) -> ServerProcess:
    """A server on ``address`` (a loopback address of its own) holding ``k`` = ``value``."""
    server = start_server("--bind", address, *(["--port", str(port)] if port else []), host=address)
    with Client(server.node, timeout_s=2.0) as direct:
        direct.set("k", value)
    return server


def test_a_name_is_looked_up_again_after_a_failure_and_finds_the_new_address(
        start_server: Callable[..., ServerProcess], named_client: Callable[[str], NamedClient]) -> None:
    first = serve(start_server, "127.0.0.2", 0, "first")
    port = first.port
    client = named_client(f"mover:{port}")
    client.name("127.0.0.2")
    assert client.get() == "first"

    # Recreated elsewhere: the name moves; the old address stops answering.
    second = serve(start_server, "127.0.0.3", port, "second")
    client.name("127.0.0.3")
    first.kill()
    assert client.get() == "second"  # the attempt on the old address timed out; the new socket looked again

    # Stopped: its name leaves the DNS. The call fails, saying so.
    client.name("")
    second.kill()
    answer = client.get()
    assert answer.startswith("unavailable:") and "cannot resolve 'mover'" in answer

    # Back, at yet another address.
    serve(start_server, "127.0.0.4", port, "third")
    client.name("127.0.0.4")
    assert client.get() == "third"


#: A client of ``argv[1]`` (timeout 0.5 s, one retry): for each line read, ``ping`` prints the time the ping
#: took and its answer or why none came; ``close`` closes its sockets (the next call looks the name up again).
_PATIENT_CLIENT = """
import sys, time
from client import Client, NodeUnavailableError
table = Client(sys.argv[1], timeout_s=0.5, retries=1)
for line in sys.stdin:
    if line.strip() == "close":
        table.close()
        continue
    started = time.monotonic()
    try:
        answer = table.ping()
    except NodeUnavailableError as exc:
        answer = str(exc)
    print(f"{time.monotonic() - started:.2f}", answer, flush=True)
"""


class PatientClient:
    """A client process whose resolver is ``resolv`` and whose hosts file is ``hosts`` (bind-mounted)."""

    def __init__(self, resolv: Path, hosts: Path, node: str) -> None:
        script = 'mount --bind "$0" /etc/resolv.conf && mount --bind "$1" /etc/hosts && exec "$2" -c "$3" "$4"'
        self.proc = subprocess.Popen(["unshare", "--mount", "sh", "-c", script, str(resolv), str(hosts),
                                      sys.executable, _PATIENT_CLIENT, node],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def ping(self) -> tuple[float, str]:
        """(seconds the ping took, its answer or why none came)."""
        assert self.proc.stdout is not None
        self.send("ping")
        took_s, answer = self.proc.stdout.readline().rstrip("\n").split(" ", 1)
        return float(took_s), answer

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_a_resolver_that_does_not_answer_delays_a_call_no_more_than_its_timeout(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """As aardvark-dns (podman's network DNS) does while it reloads for a container created or removed:
    the query is dropped, and glibc would wait its own timeout (here its defaults, 5 s a try, 2 tries).
    A name never answered is a node down at once; one answered before keeps its last answer."""
    import socket

    port = start_server().port
    resolv, hosts = tmp_path / "resolv.conf", tmp_path / "hosts"
    resolv.write_text("nameserver 127.0.0.9\noptions timeout:5 attempts:2\n")
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 known\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # reads queries, never answers
        silent.bind(("127.0.0.9", 53))
        never = PatientClient(resolv, hosts, f"slowname:{port}")
        known = PatientClient(resolv, hosts, f"known:{port}")
        later = PatientClient(resolv, hosts, f"later:{port}")
        try:
            for took_s, answer in (never.ping(), never.ping()):
                assert "cannot resolve 'slowname': no answer from the resolver within 0.5 s" in answer
                assert took_s < 2.0  # (retries + 1) x timeout_s with slack; the resolver alone would take 10 s
            assert known.ping()[1] == "True"
            with hosts.open("r+") as rewritten:  # in place: the bind mounts hold this inode
                rewritten.truncate()
                rewritten.write("127.0.0.1 localhost\n")  # "known" now goes to the silent resolver
            known.send("close")
            took_s, answer = known.ping()
            assert answer == "True" and took_s < 2.0

            # The resolver comes back (here: the name is in the hosts file) while the first lookup still waits.
            assert "no answer from the resolver" in later.ping()[1]
            with hosts.open("r+") as rewritten:
                rewritten.truncate()
                rewritten.write("127.0.0.1 localhost\n127.0.0.1 later\n")
            time.sleep(LOOKUP_AGAIN_S)
            later.send("close")
            assert later.ping()[1] == "True"  # looked up again, not waiting on the first lookup's 10 s
        finally:
            never.close()
            known.close()
            later.close()
        silent.settimeout(0)
        assert silent.recv(512)  # the queries did come
