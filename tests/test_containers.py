"""The Dockerfile and docker-compose.yml, run for real: podman builds the image, podman-compose runs the stack.

The machinery (podman, the image built once a session, :class:`Stack`) is
tests/containers.py's. Without podman these tests fail: they are the only
proof that the image builds and the cluster runs. Every test here runs its
own stack and removes it with ``down -v`` even when it fails.

README.md's transcript is run line by line: ``docker compose ARGS`` becomes
``podman-compose -p memlookup-ci ARGS`` with two changes podman-compose
needs: ``--profile client`` for ``run`` (Docker activates a named service's
profile itself), and after ``up --wait``, which podman 4.3 ignores, every
node's health check runs until it passes, which is what Docker's ``--wait``
waits for.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers import BASE_IMAGE, COMPOSE, IMAGE, NODES, PROJECT, Stack, podman, run, serving
from tests.servers import ROOT, free_port

pytestmark = [pytest.mark.containers, pytest.mark.timeout(600)]


@pytest.fixture
def stack(image: str) -> Iterator[Stack]:
    made = Stack()
    made.down()  # what a killed run left
    try:
        yield made
    finally:
        made.down()
        assert made.containers() == []


def flat(pairs: dict[str, str]) -> list[str]:
    """``mset``'s arguments: key value key value ..."""
    return [word for pair in pairs.items() for word in pair]


def lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return done.stdout.splitlines()


def keys_per_node(stack: Stack) -> dict[str, int]:
    """Each node's key count, from the cluster's ``stats`` (a node that does not answer: -1)."""
    return {name.split(":")[0]: stats.get("keys", -1) for name, stats in stack.stats().items()}


def transcript() -> list[tuple[list[str], str]]:
    """README.md's compose session: (words after ``docker compose``, the output shown)."""
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```console\n(.*?)```", text, re.S) if "$ docker compose up" in b)
    steps: list[tuple[list[str], str]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            words = shlex.split(line[2:], comments=True)
            assert words[:2] == ["docker", "compose"], line
            steps.append((words[2:], ""))
        else:
            steps[-1] = (steps[-1][0], steps[-1][1] + line + "\n")
    return steps


def test_the_readme_compose_session_prints_what_it_shows(stack: Stack):
    steps = transcript()
    assert ["run", "--rm", "client", "get", "norway"] in [words for words, _ in steps]
    for words, shown in steps:
        done = stack.compose(*words)
        assert done.returncode == 0, (words, done.stdout, done.stderr)
        if words[0] == "run":
            assert done.stdout == shown, words
        else:
            assert shown == "", f"README shows output for {words}, which prints only progress"
        if words[0] == "up":
            stack.wait_healthy()


def test_up_starts_the_three_nodes_on_their_subnet_and_not_the_client(stack: Stack):
    stack.up()
    assert stack.containers() == sorted(stack.container(node) for node in NODES)
    subnet = ipaddress.ip_network(COMPOSE["networks"]["memlookup"]["ipam"]["config"][0]["subnet"])
    for node in NODES:
        found = podman("inspect", stack.container(node), "--format", "{{json .NetworkSettings.Networks}}")
        (network,) = json.loads(found.stdout).values()
        assert ipaddress.ip_address(network["IPAddress"]) in subnet, network
    assert stack.client().returncode == 0  # the client service's default command: ping every node


def test_with_one_node_stopped_reads_and_writes_go_on(stack: Stack):
    stack.up()
    before = {f"country{i}": f"capital{i}" for i in range(60)}
    assert stack.client("mset", *flat(before)).returncode == 0
    assert keys_per_node(stack)["node2"] > 0  # node2 holds copies the others must stand in for
    assert stack.compose("stop", "node2").returncode == 0
    assert stack.client("ping").returncode == 4  # node2 is really down
    got = stack.client("mget", *before)
    assert (got.returncode, lines(got)) == (0, list(before.values()))

    after = {f"city{i}": f"river{i}" for i in range(60)}
    assert stack.client("mset", *flat(after)).returncode == 0
    got = stack.client("mget", *after)
    assert (got.returncode, lines(got)) == (0, list(after.values()))


def test_all_nodes_recreated_keep_their_data_in_the_volumes(stack: Stack):
    stack.up()
    pairs = {f"country{i}": f"capital{i}" for i in range(60)}
    assert stack.client("mset", *flat(pairs)).returncode == 0
    before = keys_per_node(stack)
    assert sum(before.values()) == 2 * len(pairs)

    assert stack.compose("down").returncode == 0  # every container removed, the volumes kept
    assert stack.containers() == []
    stack.up()
    assert keys_per_node(stack) == before
    got = stack.client("mget", *pairs)
    assert (got.returncode, lines(got)) == (0, list(pairs.values()))


def startup_line(container: str, timeout_s: float = 30) -> str:
    """The server's ``... listening on ...`` line in the container's log, once it is there."""
    deadline = time.monotonic() + timeout_s
    while (found := re.search(r"^.* listening on .*$", podman("logs", container).stderr, re.M)) is None:
        assert time.monotonic() < deadline, podman("logs", container).stderr
        time.sleep(0.2)
    return found.group(0)


def test_the_health_checks_ask_the_server(stack: Stack):
    stack.up()
    for node in NODES:
        # The compose nodes' check: the node has joined and holds its keys.
        found = podman("inspect", stack.container(node), "--format", "{{json .Config.Healthcheck.Test}}")
        assert json.loads(found.stdout)[-2:] == ["127.0.0.1", "ready"]
        check = podman("healthcheck", "run", stack.container(node))
        assert check.returncode == 0, check.stdout + check.stderr
    # The image's own check does ask the server: one listening elsewhere than the port it pings is unhealthy.
    name = f"{PROJECT}-elsewhere"
    podman("rm", "-f", "-v", name)
    try:
        assert podman("run", "-d", "--name", name, "-e", "MEMLOOKUP_PORT=7401", IMAGE).returncode == 0
        startup_line(name)
        check = podman("healthcheck", "run", name)
        assert (check.returncode, check.stdout.strip()) == (1, "unhealthy"), check.stderr
    finally:
        podman("rm", "-f", "-v", "-t", "0", name)


def test_the_server_runs_as_the_unprivileged_user(stack: Stack):
    stack.up()
    for node in NODES:
        status = podman("exec", stack.container(node), "cat", "/proc/1/cmdline", "/proc/1/status").stdout
        assert "memlookup-server" in status
        uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
        assert uid and uid.groups() == ("10001", "10001"), status
        owner = podman("exec", stack.container(node), "stat", "-c", "%u", "/data").stdout.strip()
        assert owner == "10001"


def test_the_published_port_reaches_node1_alone(stack: Stack):
    stack.up()
    host = [sys.executable, "-m", "client", "--timeout", "2", f"127.0.0.1:{stack.host_port}"]
    pong = run([*host, "ping"])
    assert (pong.returncode, pong.stdout) == (0, "PONG\n"), pong.stderr
    # What it holds is node1's share of the cluster's keys, no more.
    assert stack.client("mset", *flat({f"country{i}": f"capital{i}" for i in range(60)})).returncode == 0
    shares = keys_per_node(stack)
    assert 0 < shares["node1"] < 60
    assert json.loads(run([*host, "--json", "stats"]).stdout)["keys"] == shares["node1"]
    # A key set through it lives on node1 alone, wherever the cluster would place it.
    assert run([*host, "set", "from-the-host", "1"]).returncode == 0
    held = {node: stack.client(node, "exists", "from-the-host").returncode for node in NODES}
    assert held == {"node1": 0, "node2": 1, "node3": 1}


def test_metrics_answer_on_the_compose_network(stack: Stack):
    stack.up()
    port = COMPOSE["x-node"]["environment"]["MEMLOOKUP_METRICS_PORT"]
    fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    got = stack.compose("run", "--rm", "--entrypoint", "python3", "client", "-c", fetch,
                        f"http://node2:{port}/metrics")
    assert got.returncode == 0 and "memlookup_keys" in got.stdout, got.stderr


def distributions(image: str) -> set[str]:
    """The Python distributions installed in an image, by normalised name."""
    listed = podman("run", "--rm", image, "python3", "-c",
                    "import importlib.metadata as m; print(*{d.metadata['Name'] for d in m.distributions()})")
    assert listed.returncode == 0, listed.stderr
    return {normalised(name) for name in listed.stdout.split()}


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_image_holds_memlookup_and_what_it_needs_at_run_time_only(image: str) -> None:
    runtime = {normalised(re.split(r"[=<>~!;\[ ]", line)[0])
               for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0].isalnum()}
    assert distributions(image) - distributions(BASE_IMAGE) == {"memlookup", *runtime}
    # Installed under its own name, leaving `client`, `server`... to the image's other users.
    names = podman("run", "--rm", image, "python3", "-c",
                   "import importlib.util as u; print(*(u.find_spec(n) is not None for n in "
                   "('memlookup.client', 'memlookup.server', 'client', 'server', 'common', 'bench')))")
    assert names.stdout.split() == ["True", "True", "False", "False", "False", "False"], names.stderr


def test_a_container_runs_the_compiled_core(image: str) -> None:
    """The Dockerfile's builder stage compiled it; the server says so at start, and serves. (~3 s)"""
    name = f"{PROJECT}-core"
    podman("rm", "-f", "-v", name)
    try:
        assert podman("run", "-d", "--name", name, image).returncode == 0
        line = startup_line(name)
        assert line.endswith(", compiled core, compact table"), line
        pong = podman("exec", name, "memlookup", "127.0.0.1", "ping")
        assert (pong.returncode, pong.stdout) == (0, "PONG\n"), pong.stderr
    finally:
        podman("rm", "-f", "-v", "-t", "0", name)


def test_the_image_has_no_compiler_and_no_cython(image: str) -> None:
    """Compiling is the builder stage's: the image ships neither the compiler, the headers nor Cython."""
    probe = ("import importlib.util, os, shutil, sysconfig; "
             "print(shutil.which('gcc'), shutil.which('cc'), importlib.util.find_spec('Cython'), "
             "os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))")
    found = podman("run", "--rm", image, "python3", "-c", probe)
    assert found.stdout.split() == ["None", "None", "None", "False"], found.stdout + found.stderr


def readme_first_command() -> str:
    """README.md's "Run the server" command."""
    found = re.search(r"\*\*Run the server\*\*.*?\n\n    (.+)\n", (ROOT / "README.md").read_text(), re.S)
    assert found, "README.md has no **Run the server** command"
    return found.group(1)


def test_the_readme_first_command_runs_the_server_on_a_fresh_debian(wheelhouse: Path, tmp_path: Path) -> None:
    """The stand-in base image is Debian bookworm with python3 and python3-venv: its pip refuses to install
    outside a virtual environment (externally-managed-environment) unless told otherwise, as the image's
    PIP_BREAK_SYSTEM_PACKAGES does for the Dockerfile; here it is not told."""
    source = tmp_path / "memlookup"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                                ".pytest_cache", ".hypothesis", ".venv",
                                                                ".mypy_cache", ".ruff_cache", "*.so", "_cloop.c",
                                                                "_cstore.c"))
    debian = ["--unsetenv", "PIP_BREAK_SYSTEM_PACKAGES", "--network", "host", "-v", f"{source}:/src", "-w", "/src"]
    name, port = f"{PROJECT}-readme", free_port()
    node = [sys.executable, "-m", "client", "--timeout", "1", "--retries", "0", f"127.0.0.1:{port}"]
    podman("rm", "-f", "-v", name)
    with serving(wheelhouse):
        refused = podman("run", "--rm", *debian, BASE_IMAGE, "python3", "-m", "pip", "install", "msgpack")
        assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr, refused.stderr
        started = podman("run", "-d", "--name", name, *debian, "-e", f"MEMLOOKUP_PORT={port}", BASE_IMAGE,
                         "bash", "-c", readme_first_command())
        assert started.returncode == 0, started.stderr
        try:
            deadline = time.monotonic() + 300
            while (pong := run([*node, "ping"])).returncode != 0:
                state = podman("inspect", name, "--format", "{{.State.Status}}").stdout.strip()
                assert state == "running" and time.monotonic() < deadline, podman("logs", name).stderr[-3000:]
                time.sleep(0.5)
            assert pong.stdout == "PONG\n"
            assert run([*node, "set", "norway", "oslo"]).returncode == 0
            assert run([*node, "get", "norway"]).stdout == "oslo\n"
        finally:
            podman("rm", "-f", "-v", "-t", "0", name)
