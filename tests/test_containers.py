"""The Dockerfile and docker-compose.yml, run for real: podman builds the image, podman-compose runs the stack.

podman stands in for Docker (there is no Docker daemon in CI; ``.ci/podman-setup.sh``
installs podman and a local stand-in for ``python:3.11-slim``). Without podman
these tests fail: they are the only proof that the image builds and the
cluster runs.

* The image is built once per session from the unmodified Dockerfile by
  ``podman-compose build``, as ``docker compose build`` would, with pip
  reading a wheelhouse of the runtime requirements served on loopback (the
  stand-in base image has no package index). ``BUILDAH_FORMAT=docker`` keeps
  the HEALTHCHECK, which the OCI image format cannot hold.
* Every test runs its own stack (project ``memlookup-ci``, node1's port on a
  free host port) and removes it with ``down -v`` even when it fails. A lock
  file makes two sessions on one machine take turns (the project name and
  the network's subnet are fixed).

README.md's transcript is run line by line: ``docker compose ARGS`` becomes
``podman-compose -p memlookup-ci ARGS`` with two changes podman-compose
needs: ``--profile client`` for ``run`` (Docker activates a named service's
profile itself), and after ``up --wait``, which podman 4.3 ignores, every
node's health check runs until it passes, which is what Docker's ``--wait``
waits for.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.servers import ROOT, free_port

pytestmark = [pytest.mark.containers, pytest.mark.timeout(600)]

PROJECT = "memlookup-ci"
IMAGE = "memlookup:local"
BASE_IMAGE = "localhost/python:3.11-slim"  # made by .ci/podman-setup.sh
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
NODES = [name for name in COMPOSE["services"] if name != "client"]
LOCK = Path("/tmp/memlookup-containers.lock")


def run(command: list[str], timeout_s: float = 120, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
                          stdin=subprocess.DEVNULL, env=env)


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    return run(["podman", *args])


def answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wheelhouse_port() -> int:
    """The port the stand-in base image's pip reads its wheels from (PIP_FIND_LINKS)."""
    found = podman("image", "inspect", BASE_IMAGE, "--format", "{{json .Config.Env}}")
    assert found.returncode == 0, f"no base image {BASE_IMAGE}: run .ci/podman-setup.sh\n{found.stderr}"
    links = next(item for item in json.loads(found.stdout) if item.startswith("PIP_FIND_LINKS="))
    port = re.fullmatch(r"PIP_FIND_LINKS=http://127\.0\.0\.1:(\d+)/", links)
    assert port is not None, f"unexpected {links}"
    return int(port.group(1))


def download_wheelhouse(folder: Path) -> None:
    """Wheels of what the Dockerfile's ``pip install .`` needs, at requirements.txt's pins.

    For the base image's Python: Debian bookworm's CPython 3.11 on glibc 2.36
    (pip takes the platform tags one by one, older glibc versions included).
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    arch = platform.machine()
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 4, -1)]
    tags += [f"manylinux{legacy}_{arch}" for legacy in ("2014", "2010", "1")]
    done = run([sys.executable, "-m", "pip", "download", "-q", "-d", str(folder), "-c", "requirements.txt",
                "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
                *[word for tag in tags for word in ("--platform", tag)], *wanted], timeout_s=300)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def machine() -> Iterator[None]:
    """The machine's containers, and the wheelhouse's port, to this session alone (other sessions wait)."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run .ci/podman-setup.sh (as root)")
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def wheelhouse(machine: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheelhouse")
    download_wheelhouse(folder)
    return folder


@contextmanager
def serving(wheels: Path) -> Iterator[None]:
    """The wheelhouse on the port the stand-in base image's pip reads (its only package index)."""
    port = wheelhouse_port()
    assert not answers(port), f"port {port}, where the base image's pip looks for wheels, is taken"
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(wheels)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not answers(port):
            assert server.poll() is None and time.monotonic() < deadline, "the wheelhouse server did not start"
            time.sleep(0.05)
        yield
    finally:
        server.terminate()
        server.wait()


@pytest.fixture(scope="session")
def image(wheelhouse: Path, pytestconfig: pytest.Config,
          record_testsuite_property: Callable[[str, object], None]) -> str:
    """memlookup:local, built once, by podman-compose from the Dockerfile."""
    if shutil.which("podman-compose") is None:
        pytest.fail("podman-compose is not installed: pip install -r requirements-dev.txt")
    with serving(wheelhouse):
        # No layer cache and no previous image: each build would otherwise leave the last one's
        # layers behind. (A build takes seconds; the base image is what is worth keeping.)
        podman("rmi", "--ignore", IMAGE)
        build = run(["podman-compose", "-p", PROJECT, "--podman-build-args=--network host --layers=false",
                     "build"], timeout_s=900, env={**os.environ, "BUILDAH_FORMAT": "docker"})
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    # One image for the three nodes: podman-compose builds once per service that has `build`.
    assert build.stdout.count("STEP 1/") == 1, build.stdout
    size_bytes = int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout)
    base_bytes = int(podman("image", "inspect", BASE_IMAGE, "--format", "{{.Size}}").stdout)
    record_testsuite_property("image_size_bytes", size_bytes)
    with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\n{IMAGE}: {size_bytes / 1e6:.1f} MB ({(size_bytes - base_bytes) / 1e6:.1f} MB over the "
              f"stand-in {BASE_IMAGE}, {base_bytes / 1e6:.1f} MB)")
    return IMAGE


class Stack:
    """One compose project: podman-compose commands, its containers, and a clean end."""

    def __init__(self) -> None:
        self.host_port = free_port()

    def compose(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        profile = ["--profile", "client"] if args[:1] == ("run",) else []
        done = run(["podman-compose", "-p", PROJECT, *profile, *args], timeout_s=timeout_s,
                   env={**os.environ, "MEMLOOKUP_HOST_PORT": str(self.host_port)})
        # `run` gives the container a terminal, as in a shell: CRLF line ends.
        done.stdout = done.stdout.replace("\r\n", "\n")
        return done

    def client(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.compose("run", "--rm", "client", *args)

    def up(self) -> None:
        done = self.compose("up", "-d", "--wait")
        assert done.returncode == 0, done.stderr
        self.wait_healthy()

    def container(self, service: str) -> str:
        found = podman("ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}",
                       "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}")
        names = found.stdout.split()
        assert len(names) == 1, f"{service}: {names} {found.stderr}"
        return names[0]

    def containers(self) -> list[str]:
        found = podman("ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}",
                       "--format", "{{.Names}}")
        return sorted(found.stdout.split())

    def wait_healthy(self, timeout_s: float = 60) -> None:
        """Every node's health check (the image's) passes: ``podman healthcheck run`` exits 0."""
        deadline = time.monotonic() + timeout_s
        for node in NODES:
            name = self.container(node)
            while (check := podman("healthcheck", "run", name)).returncode != 0:
                assert time.monotonic() < deadline, f"{name} never healthy: {check.stdout}{check.stderr}"
                time.sleep(0.3)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "5")


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
    nodes = json.loads(stack.client("--json", "stats").stdout)["nodes"]
    return {name.split(":")[0]: stats.get("keys", -1) for name, stats in nodes.items()}


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


def test_the_image_health_check_pings_the_server(stack: Stack):
    stack.up()
    for node in NODES:
        check = podman("healthcheck", "run", stack.container(node))
        assert check.returncode == 0, check.stdout + check.stderr
    # It does ask the server: one listening elsewhere than the port it pings is unhealthy.
    name = f"{PROJECT}-elsewhere"
    podman("rm", "-f", "-v", name)
    try:
        assert podman("run", "-d", "--name", name, "-e", "MEMLOOKUP_PORT=7401", IMAGE).returncode == 0
        deadline = time.monotonic() + 30
        while "listening on" not in podman("logs", name).stderr:
            assert time.monotonic() < deadline
            time.sleep(0.2)
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
                                                                ".mypy_cache", ".ruff_cache", "*.so", "_cloop.c"))
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
