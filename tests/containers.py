"""The container machinery of the container tests: podman, the image built once a session, a compose project.

podman stands in for Docker (there is no Docker daemon in CI; ``.ci/podman-setup.sh``
installs podman and a local stand-in for ``python:3.11-slim``).

* The image is built once per session from the unmodified Dockerfile by
  ``podman-compose build``, as ``docker compose build`` would, with pip
  reading a wheelhouse of the runtime requirements served on loopback (the
  stand-in base image has no package index). ``BUILDAH_FORMAT=docker`` keeps
  the HEALTHCHECK, which the OCI image format cannot hold. The fixtures
  (``machine``, ``wheelhouse``, ``image``) are session-wide: conftest.py
  imports them, so every container test module shares one build.
* A :class:`Stack` is the compose project ``memlookup-ci`` (node1's port on a
  free host port). A lock file makes two sessions on one machine take turns
  (the project name and the network's subnet are fixed).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers import ROOT, free_port

PROJECT = "memlookup-ci"
#: The compose file's network as podman-compose names it for the project.
NETWORK = f"{PROJECT}_memlookup"
IMAGE = "memlookup:local"
BASE_IMAGE = "localhost/python:3.11-slim"  # made by .ci/podman-setup.sh
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
#: The nodes `up` starts (no profile), and those the profile "scale" adds.
NODES = [name for name, service in COMPOSE["services"].items() if name != "client" and "profiles" not in service]
SCALE_NODES = [name for name, service in COMPOSE["services"].items() if "scale" in service.get("profiles", [])]
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
    """Wheels of what ``pip install .`` needs (the Dockerfile's builder and runtime stages, README's first
    command), at requirements.txt's and requirements-build.txt's pins.

    For the base image's Python: Debian bookworm's CPython 3.11 on glibc 2.36
    (pip takes the platform tags one by one, older glibc versions included).
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    arch = platform.machine()
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 4, -1)]
    tags += [f"manylinux{legacy}_{arch}" for legacy in ("2014", "2010", "1")]
    done = run([sys.executable, "-m", "pip", "download", "-q", "-d", str(folder),
                "-c", "requirements.txt", "-c", "requirements-build.txt",
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
    assert build.stdout.count(f"COMMIT {IMAGE}") == 1, build.stdout
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
        if any(arg in SCALE_NODES for arg in args):
            profile += ["--profile", "scale"]
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

    def address(self, service: str) -> str:
        """The service's container's address on the project's network."""
        found = podman("inspect", self.container(service), "--format", "{{json .NetworkSettings.Networks}}")
        (network,) = json.loads(found.stdout).values()
        return str(network["IPAddress"])

    def recreate(self, service: str) -> None:
        """Remove the service's container and make a new one (a new address; the same name and volume),
        as a rolling restart of pods does."""
        done = self.compose("up", "-d", "--force-recreate", "--no-deps", service)
        assert done.returncode == 0, done.stderr
        self.wait_healthy([service])

    def add(self, service: str) -> int:
        """Start one of the nodes the profile "scale" adds, and wait until it is ready (its health
        check, ``ready``: it has joined and pulled its keys); the records it pulled, as its log says."""
        done = self.compose("up", "-d", service)
        assert done.returncode == 0, done.stderr
        self.wait_healthy([service])
        logs = podman("logs", self.container(service))
        log = logs.stdout + logs.stderr
        pulled = re.search(r" ready: (\d+) records pulled", log)
        assert pulled is not None, log[-3000:]
        return int(pulled.group(1))

    def leave(self, service: str, wait_s: float = 100) -> int:
        """Make a node leave the cluster (``memlookup 127.0.0.1 leave`` in its container, as kind's preStop
        hook does) and wait until it has; the records it pushed to their new owners."""
        left = self.compose("exec", "-T", service, "memlookup", "127.0.0.1", "leave", "--wait", f"{wait_s:g}",
                            timeout_s=wait_s + 30)
        pushed = re.fullmatch(r"left: moved (\d+) records to their new owners\n", left.stdout)
        assert left.returncode == 0 and pushed is not None, left.stdout + left.stderr
        return int(pushed.group(1))

    def stats(self) -> dict[str, dict[str, Any]]:
        """Each member's ``stats`` (a node that does not answer: ``{"error": ...}``), by name, as the client
        service sees the cluster: the members it learnt from node1..node3."""
        done = self.client("--json", "stats")
        nodes: dict[str, dict[str, Any]] = json.loads(done.stdout)["nodes"]
        return nodes

    def wait_healthy(self, services: list[str] | None = None, timeout_s: float = 60) -> None:
        """Each node's (default: every node's) health check passes (``podman healthcheck run`` exits 0): the
        compose file's, ``ready``: the node has joined and pulled its keys."""
        deadline = time.monotonic() + timeout_s
        for node in services or NODES:
            name = self.container(node)
            while (check := podman("healthcheck", "run", name)).returncode != 0:
                assert time.monotonic() < deadline, f"{name} never healthy: {check.stdout}{check.stderr}"
                time.sleep(0.3)

    def down(self) -> None:
        """Remove the containers and the data volumes: also a volume podman made by itself, unlabelled,
        for a service started alone, which ``down -v`` leaves (its data would be the next run's)."""
        self.compose("down", "-v", "--remove-orphans", "-t", "5")
        podman("volume", "rm", "--force", *(f"{PROJECT}_{volume}" for volume in COMPOSE["volumes"]))
