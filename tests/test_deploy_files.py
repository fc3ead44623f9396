"""The Docker, Compose and Kubernetes files, checked without a container engine.

* docker-compose.yml against the Compose specification's JSON schema (the
  copy vendored in check-jsonschema), the manifests against the Kubernetes
  1.37 schemas (kubernetes-validate), strictly: an unknown field fails.
* The addresses the Compose file repeats agree with each other.
* The pods keep the membership by their stable names: the environment
  Kubernetes would give a pod (fieldRef, ``$(VAR)`` expansion) names the node
  by its pod and advertises its stable DNS name; the readiness probe is
  ``ready`` and the preStop hook ``leave``, within the grace period.
* The commands the Kubernetes manifests start -- the servers' command and
  environment, the probes, the preStop hook -- run verbatim, each pod a
  network namespace with its own address, and ``memlookup`` /
  ``memlookup-server`` on PATH as they are in the image (kind cannot run
  here). The image and the Compose file run for real in test_containers.py.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
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

from client.cli_parser import parse_args
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


def pod_environment(pod: str, namespace: str = "default") -> dict[str, str]:
    """The StatefulSet container's environment as Kubernetes gives it to pod ``pod``: a ``fieldRef``
    to the pod's name or namespace is filled in, and ``$(VAR)`` is replaced by the value of a
    variable listed before it (left as it is otherwise, as Kubernetes does)."""
    container = manifests()["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    fields = {"metadata.name": pod, "metadata.namespace": namespace}
    environment: dict[str, str] = {}
    for item in container["env"]:
        if "valueFrom" in item:
            environment[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            environment[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: environment.get(m[1], m[0]),
                                               item["value"])
    return environment


def stable_name(pod: str, namespace: str = "default") -> str:
    """The pod's DNS name under the StatefulSet's headless Service, with the server's port."""
    sts = manifests()["StatefulSet"]
    port = sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    return f"{pod}.{sts['spec']['serviceName']}.{namespace}.svc.cluster.local:{port}"


def test_pods_are_named_by_their_pod_and_reached_at_their_stable_dns_name():
    sts = manifests()["StatefulSet"]
    environment = pod_environment("memlookup-4", "shop")
    assert environment["MEMLOOKUP_NODE_NAME"] == "memlookup-4"
    assert environment["MEMLOOKUP_ADVERTISE"] == stable_name("memlookup-4", "shop")
    assert environment["MEMLOOKUP_PORT"] == stable_name("memlookup-4").rsplit(":", 1)[1]
    # Every pod is given the same seeds: the first pods, which exist whenever any pod does.
    seeds = environment["MEMLOOKUP_JOIN"].split(",")
    assert seeds == [stable_name(f"{sts['metadata']['name']}-{index}", "shop") for index in range(len(seeds))]
    assert 1 <= len(seeds) <= manifests()["HorizontalPodAutoscaler"]["spec"]["minReplicas"]
    assert pod_environment("memlookup-0")["MEMLOOKUP_JOIN"] == ",".join(stable_name(f"memlookup-{index}")
                                                                        for index in range(len(seeds)))


def test_pods_are_ready_once_joined_and_leave_before_they_stop():
    """Scaling and restarts follow the membership procedure, not a rebalance job."""
    docs = manifests()
    sts = docs["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    probe = parse_args(container["readinessProbe"]["exec"]["command"][1:])
    assert (probe.command, probe.node) == ("ready", "127.0.0.1")
    pre_stop = parse_args(container["lifecycle"]["preStop"]["exec"]["command"][1:])
    assert (pre_stop.command, pre_stop.node) == ("leave", "127.0.0.1")
    # The leave may use its whole wait and the server still stops on SIGTERM before the kill.
    assert pre_stop.wait_s + 10 <= pod["terminationGracePeriodSeconds"]
    assert sts["spec"]["podManagementPolicy"] == "OrderedReady"  # one change of membership at a time
    assert "CronJob" not in docs
    for direction in ("scaleUp", "scaleDown"):
        assert [policy["value"] for policy in docs["HorizontalPodAutoscaler"]["spec"]["behavior"][direction]
                ["policies"]] == [1]
    assert docs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_compose_network_addresses_agree():
    """Every service is on the network, the servers allow exactly its subnet, no node has a fixed
    address (a recreated container gets a new one, as a pod does) and the client names the nodes,
    with no addresses of its own for them; one service builds the one image. The nodes keep the
    membership, each named by its service and joining through the three that `up` starts; the
    others are under the profile "scale"."""
    compose = yaml.safe_load(COMPOSE.read_text())
    subnet = ipaddress.ip_network(compose["networks"]["memlookup"]["ipam"]["config"][0]["subnet"])
    services = compose["services"]
    nodes = {name: s for name, s in services.items() if name != "client"}
    started = [name for name, s in nodes.items() if "profiles" not in s]
    assert started == ["node1", "node2", "node3"]
    assert all(s["profiles"] == ["scale"] for name, s in nodes.items() if name not in started)
    client = services["client"]
    assert client["environment"]["MEMLOOKUP_NODES"].split(",") == started
    assert "extra_hosts" not in client and client["networks"] == ["memlookup"]
    for name, node in nodes.items():
        assert node["networks"] == ["memlookup"]  # a list: no ipv4_address
        environment = node["environment"]
        assert environment["MEMLOOKUP_ALLOW"] == str(subnet)
        assert environment["MEMLOOKUP_NODE_NAME"] == node["hostname"] == name
        assert "MEMLOOKUP_ADVERTISE" not in environment  # reached at its name
        assert environment["MEMLOOKUP_JOIN"].split(",") == started
        assert node["healthcheck"]["test"][-2:] == ["127.0.0.1", "ready"]
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
def test_statefulset_pods_join_serve_and_leave_by_their_own_commands(lab: NetLab, containers: Containers):
    """Three pods started one after another as the StatefulSet starts them, each named and found by
    its stable DNS name; the readiness probe, a client, and the last pod's preStop hook."""
    container = manifests()["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    service = manifests()["StatefulSet"]["spec"]["serviceName"]
    pods = {"memlookup-0": "s1", "memlookup-1": "s2", "memlookup-2": "s3"}
    names = "".join(f"{lab.hosts[host]} {stable_name(pod).rsplit(':', 1)[0]}\n" for pod, host in pods.items())
    for host in (*pods.values(), "c"):
        lab.hosts_file(host, names + ("".join(f"{lab.hosts[h]} {service}\n" for h in pods.values())
                                      if host == "c" else ""))
    ready = container["readinessProbe"]["exec"]["command"]
    for pod, host in pods.items():  # OrderedReady: the next pod once this one is ready
        containers.start(host, container["command"], pod_environment(pod))
        containers.until_healthy(host, ready)
        assert containers.run(host, container["livenessProbe"]["exec"]["command"]).returncode == 0

    client = ["memlookup", "--timeout", "1", service]
    keys = [f"k{index}" for index in range(50)]
    assert containers.run("c", [*client, "mset", *(word for key in keys for word in (key, key + "v"))]).returncode == 0
    leave = containers.run("s3", container["lifecycle"]["preStop"]["exec"]["command"])
    assert leave.returncode == 0 and leave.stdout.startswith("left: moved "), leave.stderr
    assert containers.run("s3", ready).returncode == 1  # a pod that has left is not ready
    got = containers.run("c", [*client, "mget", *keys])
    assert (got.returncode, got.stdout) == (0, "".join(key + "v\n" for key in keys))


def test_a_copy_of_the_manifest_with_a_bad_port_name_is_caught(tmp_path):
    docs = list(yaml.safe_load_all(MANIFESTS.read_text()))
    changed = copy.deepcopy(docs)
    for doc in changed:
        if doc["kind"] == "Service":
            doc["spec"]["ports"][0]["port"] = "seventy-four-hundred"
    bad = tmp_path / "ports.yaml"
    bad.write_text(yaml.safe_dump_all(changed))
    assert check_manifests(bad).returncode != 0
