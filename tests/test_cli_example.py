"""The example from the README, through the real CLI against a real server."""

from tests.servers import run_cli


def test_the_readme_example_exactly(server):
    node = server.node
    first = run_cli(node, "set", "norway", "oslo")
    assert (first.returncode, first.stdout, first.stderr) == (0, "", "")
    assert run_cli(node, "set", "denmark", "copenhagen").returncode == 0

    found = run_cli(node, "get", "norway")
    assert (found.returncode, found.stdout, found.stderr) == (0, "oslo\n", "")

    missing = run_cli(node, "get", "sweden")
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", "error: not found\n")


def test_unreachable_node_names_the_node_and_the_wait(start_server):
    server = start_server()
    node = server.node
    server.stop()
    result = run_cli("--timeout", "0.2", "--retries", "1", node, "get", "norway")
    assert result.returncode == 4
    assert result.stderr.startswith("error: no reply from " + node)
    assert "0.4 s" in result.stderr or "0.5 s" in result.stderr
