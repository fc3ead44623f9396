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

