#!/usr/bin/env bash
# .ci/podman-setup.sh: make `podman build` and `podman-compose` work for the
# container tests (tests/test_containers.py) on a Debian machine with no
# Docker daemon, cgroups v1, root without CAP_SYS_RESOURCE, and no container
# registry. .ci/run calls it, as root; running it again is quick (everything
# that exists is kept). It writes /etc/containers/containers.conf.
#
# Adapted from the build machines' ../shared/containers/setup-podman.sh (same
# engine settings and the same stand-in base image), so CI does not depend on
# that directory. podman-compose itself is pinned in requirements-dev.txt.
#
# After it, `FROM python:3.11-slim` resolves to a local stand-in image built
# from Debian bookworm packages (Python 3.11, pip, venv) whose pip installs only
# from a wheelhouse served on http://127.0.0.1:PORT/ (PORT is baked into the
# image; the tests read it back from the image's PIP_FIND_LINKS), and
# `FROM python:3.11` (the Dockerfile's builder stage) to that image with gcc
# and Python's headers added. The shared script's FULL=1 makes the latter by a
# second debootstrap with build-essential (212 s measured here); adding the
# three packages the builder needs to the first image takes 31 s, and shares
# the first image's layers. On a new machine the first image takes about 4
# minutes (233 s measured, 2 cores shared), the second 31 s; a run that finds
# both takes half a second.
set -euo pipefail
PORT="${MEMLOOKUP_WHEELHOUSE_PORT:-8765}"
BASE="localhost/python:3.11-slim"
FULL_BASE="localhost/python:3.11"

need=()
for cmd in podman runc debootstrap; do command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd"); done
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

# crun refuses cgroups v1 "hybrid" mounts and systemd is absent: runc with
# cgroupfs. Container ulimits at or below this machine's hard limits (raising
# them needs CAP_SYS_RESOURCE).
conf="[containers]
default_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]

[engine]
runtime = \"runc\"
cgroup_manager = \"cgroupfs\"
events_logger = \"file\""
mkdir -p /etc/containers
if [ "$(cat /etc/containers/containers.conf 2>/dev/null)" != "$conf" ]; then
    printf '%s\n' "$conf" > /etc/containers/containers.conf
fi

if ! podman image exists "$BASE"; then
    root="$(mktemp -d /tmp/python-base-rootfs.XXXXXX)"
    trap 'rm -rf "$root" "$root.log"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$root" >"$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
    tar -C "$root" -c . | podman import --quiet \
        --change "ENV PIP_BREAK_SYSTEM_PACKAGES=1" \
        --change "ENV PIP_NO_INDEX=1" \
        --change "ENV PIP_FIND_LINKS=http://127.0.0.1:$PORT/" \
        --change 'CMD ["python3"]' - "$BASE" >/dev/null
fi
if ! podman image exists "$FULL_BASE"; then
    podman build --quiet --network host --layers=false -t "$FULL_BASE" -f - >/dev/null <<CONTAINERFILE
FROM $BASE
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev python3-dev >/dev/null \\
    && rm -rf /var/lib/apt/lists/*
CONTAINERFILE
fi
for image in "$BASE" "$FULL_BASE"; do
    echo "base image $image: $(podman image inspect "$image" --format '{{.Size}}') bytes"
done
echo "podman $(podman version --format '{{.Client.Version}}')"
