"""Protected mode, from a real second host: a network namespace on a bridge.

The namespace ``mls-peer`` holds 10.78.0.2; the server runs in the root
namespace on 10.78.0.1 (bridge ``mlsbr0``), listening on every interface.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from common.keys import create_key_pair
from tests.servers import run_cli

pytestmark = pytest.mark.netns

NAMESPACE = "mls-peer"
BRIDGE = "mlsbr0"
HOST_VETH, PEER_VETH = "mlsv0", "mlsv1"
SERVER_IP, PEER_IP = "10.78.0.1", "10.78.0.2"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _teardown() -> None:
    _ip("netns", "del", NAMESPACE, check=False)
    _ip("link", "del", HOST_VETH, check=False)
    _ip("link", "del", BRIDGE, check=False)


@pytest.fixture(scope="module")
def peer_namespace() -> Iterator[list[str]]:
    """A namespace reachable from the root namespace; yields the command prefix to run in it."""
    _teardown()
    try:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{SERVER_IP}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        _ip("netns", "add", NAMESPACE)
        _ip("link", "add", HOST_VETH, "type", "veth", "peer", "name", PEER_VETH)
        _ip("link", "set", HOST_VETH, "master", BRIDGE)
        _ip("link", "set", HOST_VETH, "up")
        _ip("link", "set", PEER_VETH, "netns", NAMESPACE)
        prefix = ["ip", "netns", "exec", NAMESPACE]
        subprocess.run([*prefix, "ip", "addr", "add", f"{PEER_IP}/24", "dev", PEER_VETH], check=True)
        subprocess.run([*prefix, "ip", "link", "set", PEER_VETH, "up"], check=True)
        subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run([*prefix, "ping", "-c", "1", "-W", "5", SERVER_IP], check=False, capture_output=True)
        yield prefix
    finally:
        _teardown()


def _remote(prefix: list[str], port: int, *args: str, keys: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return run_cli("--timeout", "0.5", "--retries", "1", *keys, f"{SERVER_IP}:{port}", *args, prefix=prefix)


def test_a_peer_on_another_host_is_refused_by_default(peer_namespace, start_server):
    server = start_server("--bind", "0.0.0.0")
    assert "protected mode" in server.log
    refused = _remote(peer_namespace, server.port, "ping")
    assert refused.returncode == 4, refused.stderr
    assert "refused by the server's access policy: without keys it admits only loopback peers" in refused.stderr
    assert server.wait_for_log(f"refused a connection from {PEER_IP}: address not allowed")
    local = run_cli(f"127.0.0.1:{server.port}", "ping")
    assert local.returncode == 0


def test_an_address_nobody_answers_times_out_saying_no_connection_was_made(peer_namespace):
    # 10.78.0.99 is on the bridge's network but no host has it: the SYN waits for
    # ARP (about 3 s before the kernel gives up), longer than the CLI waits.
    result = run_cli("--timeout", "0.5", "--retries", "1", "10.78.0.99:7400", "ping", prefix=peer_namespace)
    assert result.returncode == 4
    assert result.stderr == ("error: no reply from 10.78.0.99:7400 within 1.0 s (2 attempts of 0.5 s): no TCP "
                             "connection could be made (the host is down or unreachable, or a firewall drops "
                             "the packets)\n")


def test_allow_lets_the_network_in(peer_namespace, start_server):
    server = start_server("--bind", "0.0.0.0", "--allow", "10.78.0.0/24")
    assert "accepting addresses in" in server.log and "10.78.0.0/24" in server.log
    assert _remote(peer_namespace, server.port, "set", "k", "remote").returncode == 0
    assert run_cli(f"127.0.0.1:{server.port}", "get", "k").stdout == "remote\n"


def test_allow_of_another_network_still_refuses(peer_namespace, start_server):
    server = start_server("--bind", "0.0.0.0", "--allow", "192.168.77.0/24")
    assert _remote(peer_namespace, server.port, "ping").returncode == 4


def test_insecure_allow_all_lets_everyone_in(peer_namespace, start_server):
    server = start_server("--bind", "0.0.0.0", "--insecure-allow-all")
    assert "accepting any address, without authentication" in server.log
    assert _remote(peer_namespace, server.port, "ping").returncode == 0


def test_keys_let_the_peer_in_without_allow(peer_namespace, start_server, tmp_path):
    server_public, server_secret = create_key_pair(tmp_path, "server")
    _, client_secret = create_key_pair(tmp_path / "clients", "remote")
    server = start_server("--bind", "0.0.0.0", "--curve-secret-key", str(server_secret),
                          "--authorized-keys", str(tmp_path / "clients"))
    keys = ("--server-key", str(server_public), "--client-key", str(client_secret))
    assert _remote(peer_namespace, server.port, "set", "k", "v", keys=keys).returncode == 0
    assert _remote(peer_namespace, server.port, "ping").returncode == 4
