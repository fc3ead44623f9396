"""CurveZMQ: a listed client key gets in; every other client fails within its timeout.

The tests that take ``make_client`` run with a ``Client`` and with an
``AsyncClient`` (tests/conftest.py): both tell a refused key from silence.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable

import pytest

from client import Client, NodeUnavailableError
from common.errors import AuthenticationError
from common.keys import create_key_pair, load_key_pair
from tests.servers import ROOT, run_cli

TIMEOUT_S = 0.5


@pytest.fixture
def keys(tmp_path):
    """A server pair, an authorized client (alice) and a stranger (mallory)."""
    server_public, server_secret = create_key_pair(tmp_path / "server", "server")
    authorized = tmp_path / "authorized"
    _, alice_secret = create_key_pair(authorized, "alice")
    mallory_public, mallory_secret = create_key_pair(tmp_path / "other", "mallory")
    return {
        "server": str(server_public), "server_secret": str(server_secret), "authorized": str(authorized),
        "alice": str(alice_secret), "mallory": str(mallory_secret), "mallory_public": str(mallory_public),
    }


@pytest.fixture
def curve_server(start_server, keys):
    return start_server("--curve-secret-key", keys["server_secret"], "--authorized-keys", keys["authorized"])


def _fails_within(call: Callable[[], object], retries: int) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(NodeUnavailableError) as caught:
        call()
    return caught.value, time.monotonic() - started


def test_a_listed_client_key_works_and_is_encrypted(curve_server, keys, make_client):
    with make_client(curve_server.node, timeout_s=2, server_key=keys["server"], client_key=keys["alice"]) as table:
        assert table.set("norway", "oslo")
        assert table.get("norway") == "oslo"
        assert table.stats()["auth"]["curve"] is True
    result = run_cli("--server-key", keys["server"], "--client-key", keys["alice"], curve_server.node, "get", "norway")
    assert (result.returncode, result.stdout) == (0, "oslo\n")
    assert curve_server.stop() == 0  # the ZAP thread does not hold up a clean exit


def test_keys_from_the_environment(curve_server, keys):
    env = {"MEMLOOKUP_SERVER_KEY": keys["server"], "MEMLOOKUP_CLIENT_KEY": keys["alice"]}
    assert run_cli(curve_server.node, "set", "k", "v", env=env).returncode == 0
    assert run_cli(curve_server.node, "get", "k", env=env).stdout == "v\n"


def test_unknown_key_is_refused_within_the_timeout_while_alice_keeps_working(curve_server, keys, make_client):
    alice = Client(curve_server.node, timeout_s=2, server_key=keys["server"], client_key=keys["alice"])
    alice.set("shared", "before")
    mallory = make_client(curve_server.node, timeout_s=TIMEOUT_S, retries=2,
                          server_key=keys["server"], client_key=keys["mallory"])
    error, waited = _fails_within(lambda: mallory.get("shared"), retries=2)
    assert isinstance(error, AuthenticationError)
    assert "refused our client key" in str(error)
    assert waited < TIMEOUT_S * 3  # a refusal is not retried
    assert alice.get("shared") == "before"
    assert alice.set("shared", "after")
    assert curve_server.wait_for_log("client key not authorized")
    with pytest.raises(AuthenticationError):
        mallory.set("shared", "mallory was here")
    assert alice.get("shared") == "after"
    alice.close()
    mallory.close()


def test_no_client_key_is_refused(curve_server, keys, make_client):
    anonymous = make_client(curve_server.node, timeout_s=TIMEOUT_S, retries=1, server_key=keys["server"])
    error, waited = _fails_within(lambda: anonymous.ping(), retries=1)
    assert isinstance(error, AuthenticationError)
    assert waited < TIMEOUT_S * 2 + 0.5
    anonymous.close()


def test_a_plaintext_client_gets_no_reply_and_the_server_logs_it(curve_server, keys):
    plain = Client(curve_server.node, timeout_s=TIMEOUT_S, retries=1)
    _, waited = _fails_within(lambda: plain.ping(), retries=1)
    assert waited < TIMEOUT_S * 2 + 0.5
    assert curve_server.wait_for_log("handshake failed")
    with Client(curve_server.node, timeout_s=2, server_key=keys["server"], client_key=keys["alice"]) as alice:
        assert alice.ping()
    plain.close()


def test_the_wrong_server_key_is_an_authentication_error(curve_server, keys, make_client):
    impostor = make_client(curve_server.node, timeout_s=TIMEOUT_S, retries=2,
                           server_key=keys["mallory_public"], client_key=keys["alice"])
    error, waited = _fails_within(lambda: impostor.ping(), retries=2)
    assert isinstance(error, AuthenticationError)
    assert waited < TIMEOUT_S * 3
    impostor.close()


def test_cli_reports_a_refused_key_with_exit_4(curve_server, keys):
    result = run_cli("--timeout", str(TIMEOUT_S), "--server-key", keys["server"], "--client-key", keys["mallory"],
                     curve_server.node, "get", "k")
    assert result.returncode == 4
    assert result.stderr == (f"error: {curve_server.node}: the server refused our client key (it is not among "
                             "its --authorized-keys; --client-key names ours), or our address (not in its --allow)\n")


def test_a_key_added_to_the_directory_is_accepted_without_restart(curve_server, keys, tmp_path):
    mallory = Client(curve_server.node, timeout_s=TIMEOUT_S, retries=0,
                     server_key=keys["server"], client_key=keys["mallory"])
    with pytest.raises(AuthenticationError):
        mallory.ping()
    os.link(keys["mallory_public"], os.path.join(keys["authorized"], "mallory.key"))
    deadline = time.monotonic() + 10
    while True:
        try:
            assert mallory.ping()
            break
        except AuthenticationError:
            assert time.monotonic() < deadline, "the new key was never picked up"
    assert curve_server.wait_for_log("authorized keys reloaded")
    mallory.close()


def test_keygen_writes_a_private_secret_and_refuses_to_overwrite(tmp_path):
    import subprocess
    import sys

    def keygen(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "client.keygen", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)

    made = keygen(str(tmp_path / "keys"), "web1")
    assert made.returncode == 0, made.stderr
    secret = tmp_path / "keys" / "web1.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    public, _ = load_key_pair(secret)
    assert public.decode() in (tmp_path / "keys" / "web1.key").read_text()
    again = keygen(str(tmp_path / "keys"), "web1")
    assert again.returncode == 1 and "exists" in again.stderr
    assert load_key_pair(secret)[0] == public
    assert keygen("--force", str(tmp_path / "keys"), "web1").returncode == 0
    assert load_key_pair(secret)[0] != public


def test_bad_security_settings_stop_the_server_with_a_message(tmp_path, keys):
    import subprocess
    import sys

    def server(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "server", "--port", "0", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)

    no_curve = server("--authorized-keys", keys["authorized"])
    assert no_curve.returncode == 2 and "--authorized-keys needs --curve-secret-key" in no_curve.stderr
    bad_net = server("--allow", "10.0.0.0/33")
    assert bad_net.returncode == 2 and "is not an IP address or network" in bad_net.stderr
    public_as_secret = server("--curve-secret-key", keys["server"])
    assert public_as_secret.returncode == 1 and "holds no secret key" in public_as_secret.stderr
    missing_dir = server("--curve-secret-key", keys["server_secret"], "--authorized-keys", str(tmp_path / "nope"))
    assert missing_dir.returncode == 1 and "does not exist" in missing_dir.stderr


def test_a_client_key_without_the_server_key_is_a_usage_error(server, keys):
    with pytest.raises(ValueError, match="server's public key"):
        Client(server.node, client_key=keys["alice"])
    result = run_cli("--client-key", keys["alice"], server.node, "ping")
    assert result.returncode == 2 and "server's public key" in result.stderr


def test_protected_mode_is_announced_at_start(server):
    assert "accepting loopback peers only (protected mode" in server.log


def test_memlookup_keygen_by_mistake_points_to_the_keygen_program(tmp_path):
    result = run_cli("keygen", str(tmp_path))
    assert result.returncode == 2
    assert "hint: keys are made by memlookup-keygen DIR [NAME]" in result.stderr
    assert not any(tmp_path.iterdir())


def test_a_flood_of_refused_connections_does_not_flood_the_log(curve_server, keys):
    for _ in range(15):
        with Client(curve_server.node, timeout_s=0.2, retries=0, server_key=keys["server"],
                    client_key=keys["mallory"]) as mallory:
            with pytest.raises(NodeUnavailableError):
                mallory.ping()
    with Client(curve_server.node, timeout_s=2, server_key=keys["server"], client_key=keys["alice"]) as alice:
        refused = alice.stats()["auth"]["refused_connections"]
    lines = [line for line in curve_server.log.splitlines() if "refused a connection" in line]
    assert refused >= 15  # more than the 10 lines a window may log
    assert len(lines) <= 10, f"{len(lines)} refusal lines for {refused} refusals"


def test_a_secret_key_readable_by_others_is_warned_about(start_server, keys):
    os.chmod(keys["server_secret"], 0o644)
    server = start_server("--curve-secret-key", keys["server_secret"])
    assert "can be read by other users: chmod 600 it" in server.log
    assert "encrypted, with any client key" in server.log


def test_pipelines_and_pipe_mode_use_the_keys_too(curve_server, keys):
    with Client(curve_server.node, timeout_s=2, server_key=keys["server"], client_key=keys["alice"]) as table:
        pipeline = table.pipeline()
        for i in range(50):
            pipeline.set(f"k{i}", str(i))
        pipeline.get("k7")
        assert pipeline.execute()[-1] == "7"
    piped = run_cli("--server-key", keys["server"], "--client-key", keys["alice"], curve_server.node, "--pipe",
                    input="set piped yes\n")
    assert piped.returncode == 0, piped.stderr
    fetched = run_cli("--server-key", keys["server"], "--client-key", keys["alice"], curve_server.node, "get", "piped")
    assert fetched.stdout == "yes\n"


def test_a_cluster_of_curve_servers_shares_one_server_key(start_server, keys):
    args = ("--curve-secret-key", keys["server_secret"], "--authorized-keys", keys["authorized"])
    nodes = ",".join(start_server(*args).node for _ in range(2))
    from client.cluster import ClusterClient

    with ClusterClient(nodes, replicas=2, timeout_s=2, server_key=keys["server"], client_key=keys["alice"]) as table:
        table.set("norway", "oslo")
        assert table.get("norway") == "oslo"
    cli = run_cli("--server-key", keys["server"], "--client-key", keys["alice"], nodes, "get", "norway")
    assert (cli.returncode, cli.stdout) == (0, "oslo\n")
