"""The Docker, Compose and Kubernetes files, checked without a container engine.

* docker-compose.yml against the Compose specification's JSON schema (the
  copy vendored in check-jsonschema), the manifests against the Kubernetes
  1.37 schemas (kubernetes-validate), strictly: an unknown field fails.
* The addresses the Compose file repeats agree with each other.
* The commands the Kubernetes manifests start -- the servers' command and
  environment, the probes, the rebalance job -- run verbatim, each pod a
  network namespace with its own address, and ``memlookup`` /
  ``memlookup-server`` on PATH as they are in the image (kind cannot run
  here). The image and the Compose file run for real in test_containers.py.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from client.routing import DEAD_FOR_S
from tests.netlab import NetLab, build_lab
from tests.servers import ROOT

COMPOSE = ROOT / "docker-compose.yml"
MANIFESTS = ROOT / "kind" / "memlookup.yaml"
KIND_CONFIG = ROOT / "kind" / "cluster.yaml"
DOCKERFILE = ROOT / "Dockerfile"


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def check_manifests(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--kubernetes-version", "1.37.0", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def manifests() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFESTS.read_text()) if doc}


# -- schemas ----------------------------------------------------------------


def test_compose_file_follows_the_compose_specification(tmp_path):
    assert check_compose(COMPOSE).returncode == 0
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["node1"]["hostnmae"] = broken["services"]["node1"].pop("hostname")
    bad = tmp_path / "compose.yml"
    bad.write_text(yaml.safe_dump(broken))
    assert check_compose(bad).returncode != 0  # the check does reject a wrong file


def test_manifests_follow_the_kubernetes_schemas(tmp_path):
    result = check_manifests(MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = set(manifests())
    assert {"StatefulSet", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    docs = list(yaml.safe_load_all(MANIFESTS.read_text()))
    for doc in docs:
        if doc["kind"] == "StatefulSet":
            doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["comand"] = ["x"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    assert check_manifests(bad).returncode != 0


def test_statefulset_has_volumes_probes_requests_and_matching_services():
    docs = list(yaml.safe_load_all(MANIFESTS.read_text()))
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    sts = manifests()["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert services[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    assert any(s["spec"].get("clusterIP") != "None" for s in services.values())  # a client-facing one
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert {"name": claim, "mountPath": "/data"} in container["volumeMounts"]
    assert {"name": "SERVER_DATA_DIR", "value": "/data"} in container["env"]
    assert container["readinessProbe"]["exec"]["command"] and container["livenessProbe"]["exec"]["command"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # A rolling update waits until clients use a restarted pod again before taking the next one down.
    assert sts["spec"]["minReadySeconds"] > DEAD_FOR_S
    hpa = manifests()["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == sts["metadata"]["name"]
    # The kind cluster publishes the client Service's node port on the host.
    node_port = next(p["nodePort"] for s in services.values() for p in s["spec"]["ports"] if "nodePort" in p)
    kind = yaml.safe_load(KIND_CONFIG.read_text())
    assert kind["kind"] == "Cluster" and kind["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert node_port in [m["containerPort"] for n in kind["nodes"] for m in n.get("extraPortMappings", [])]


def test_compose_network_addresses_agree():
    """Every service is on the network, the servers allow exactly its subnet, no node has a fixed
    address (a recreated container gets a new one, as a pod does) and the client names the nodes,
    with no addresses of its own for them; one service builds the one image."""
    compose = yaml.safe_load(COMPOSE.read_text())
    subnet = ipaddress.ip_network(compose["networks"]["memlookup"]["ipam"]["config"][0]["subnet"])
    services = compose["services"]
    nodes = {name: s for name, s in services.items() if name != "client"}
    client = services["client"]
    assert set(nodes) == set(client["environment"]["MEMLOOKUP_NODES"].split(","))
    assert "extra_hosts" not in client and client["networks"] == ["memlookup"]
    for node in nodes.values():
        assert node["networks"] == ["memlookup"]  # a list: no ipv4_address
        assert node["environment"]["MEMLOOKUP_ALLOW"] == str(subnet)
    assert "client" in client["profiles"]
    assert [name for name, s in services.items() if "build" in s] == ["node1"]
    assert {s["image"] for s in services.values()} == {"memlookup:local"}
    published = [port for s in services.values() for port in s.get("ports", [])]
    assert len(published) == 1 and published[0].startswith("127.0.0.1:")


def dockerfile() -> dict[str, Any]:
    """The Dockerfile's instructions that matter here (continuation lines joined): a
    string, or the list a JSON-form instruction holds; ``ENV`` a dict."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found: dict[str, Any] = {"ENV": {}}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            found["ENV"].update(dict(token.split("=", 1) for token in shlex.split(rest)))
        elif word in ("FROM", "USER", "VOLUME", "CMD"):
            found[word] = yaml.safe_load(rest) if rest.lstrip().startswith("[") else rest.strip()
        elif word == "HEALTHCHECK":
            found[word] = yaml.safe_load(rest[rest.index("CMD") + 3:])
    return found


def test_dockerfile_is_slim_unprivileged_with_a_volume_and_a_health_check():
    found = dockerfile()
    assert found["FROM"].endswith("-slim")
    assert found["USER"] not in ("root", "0")
    assert "/data" in found["VOLUME"]
    assert found["HEALTHCHECK"][:1] == ["memlookup"] and found["HEALTHCHECK"][-1] == "ping"
    assert found["ENV"]["MEMLOOKUP_BIND"] == "0.0.0.0"


# -- the Kubernetes commands, run for real in network namespaces ----------------


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    yield from build_lab({"s1": 11, "s2": 12, "s3": 13, "c": 2})


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> str:
    """A PATH with ``memlookup`` and ``memlookup-server`` as the image installs them."""
    folder = tmp_path_factory.mktemp("bin")
    for name, module in (("memlookup", "client"), ("memlookup-server", "server")):
        script = folder / name
        script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m {module} \"$@\"\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return f"{folder}:{os.environ['PATH']}"


class Containers:
    """Processes started as a pod's container would start them, each in a namespace."""

    def __init__(self, lab: NetLab, path: str, volumes: Path) -> None:
        self.lab = lab
        self.path = path
        self.volumes = volumes
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, environment: dict[str, str]) -> dict[str, str]:
        return {**os.environ, "PATH": self.path, "PYTHONPATH": str(ROOT), **environment}

    def start(self, host: str, command: list[str], environment: dict[str, str]) -> None:
        environment = dict(environment)
        if environment.get("SERVER_DATA_DIR") == "/data":  # the data volume, mounted at /data
            volume = self.volumes / host
            volume.mkdir(exist_ok=True)
            environment["SERVER_DATA_DIR"] = str(volume)
        self.procs.append(subprocess.Popen(
            [*self.lab.prefix(host), *command], env=self.env(environment), cwd="/",
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))

    def run(self, host: str, command: list[str], environment: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.lab.prefix(host), *command], env=self.env(environment or {}), cwd="/",
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    def until_healthy(self, host: str, check: list[str], timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.run(host, check)
            if result.returncode == 0:
                return
            assert time.monotonic() < deadline, f"{host} never healthy: {result.stderr}"
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def containers(lab: NetLab, image_path: str, tmp_path: Path) -> Iterator[Containers]:
    started = Containers(lab, image_path, tmp_path)
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.netns
def test_statefulset_probes_and_rebalance_job_run_against_its_pods(lab: NetLab, containers: Containers):
    docs = manifests()
    container = docs["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    environment = {item["name"]: item["value"] for item in container["env"]}
    service = docs["StatefulSet"]["spec"]["serviceName"]
    pods = ("s1", "s2", "s3")
    # The headless Service's name resolves to every pod.
    lab.hosts_file("c", "".join(f"{lab.hosts[p]} {service}\n" for p in pods))
    for pod in pods:
        containers.start(pod, container["command"], environment)
    for pod in pods:
        containers.until_healthy(pod, container["readinessProbe"]["exec"]["command"])
        assert containers.run(pod, container["livenessProbe"]["exec"]["command"]).returncode == 0

    client = ["memlookup", "--timeout", "1", service]
    assert containers.run("c", [*client, "set", "norway", "oslo"]).returncode == 0
    rebalance = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert service in rebalance
    done = containers.run("c", rebalance)
    assert done.returncode == 0 and "examined 2 copies" in done.stdout, done.stderr
    got = containers.run("c", [*client, "get", "norway"])
    assert (got.returncode, got.stdout) == (0, "oslo\n")


def test_a_copy_of_the_manifest_with_a_bad_port_name_is_caught(tmp_path):
    docs = list(yaml.safe_load_all(MANIFESTS.read_text()))
    changed = copy.deepcopy(docs)
    for doc in changed:
        if doc["kind"] == "Service":
            doc["spec"]["ports"][0]["port"] = "seventy-four-hundred"
    bad = tmp_path / "ports.yaml"
    bad.write_text(yaml.safe_dump_all(changed))
    assert check_manifests(bad).returncode != 0
