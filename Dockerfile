# memlookup server (and CLI) image.
#
#   docker build -t memlookup:local .
#   docker run -d --name memlookup -p 127.0.0.1:7400:7400 -v memlookup-data:/data memlookup:local
#   docker exec memlookup memlookup 127.0.0.1 ping
#   docker logs memlookup        # the start-up line ends with the core that runs: "compiled core, compact table"

# The builder stage: a wheel of memlookup with the server's compiled core
# (server/_cloop.pyx), built where gcc and Python's headers are, with the
# build requirements at requirements-build.txt's pins. Nothing of this stage
# but the wheel reaches the image. -g0: no debug information in the compiled
# core (0.25 MB instead of 0.86 MB; the code is the same).
FROM python:3.11 AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml setup.py requirements-build.txt README.md ./
COPY common ./common
COPY client ./client
COPY server ./server
COPY bench ./bench
COPY man ./man
RUN pip install --requirement requirements-build.txt \
    && CFLAGS=-g0 pip wheel --no-build-isolation --no-deps --wheel-dir /wheels .

# The image: python:3.11-slim (no compiler, no Cython) with that wheel.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# memlookup (the packages memlookup.*, the programs, the man pages) with the
# runtime dependencies at requirements.txt's pins; the test and benchmark
# tools (requirements-dev.txt) stay out of the image. The wheel is mounted,
# not copied, so no layer keeps it. setup.py makes the compiled core
# optional, so the build fails here, not in a running container, if it was
# not built or cannot load.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements.txt,target=/tmp/requirements.txt \
    pip install --constraint /tmp/requirements.txt /wheels/memlookup-*.whl \
    && python3 -c 'from memlookup.server.core import CORE_DESCRIPTION as core; assert core == "compiled core, compact table", core'

# An unprivileged user owning the data directory.
RUN groupadd --system --gid 10001 memlookup \
    && useradd --system --uid 10001 --gid memlookup --home-dir /data --shell /usr/sbin/nologin memlookup \
    && mkdir -p /data && chown memlookup:memlookup /data
VOLUME ["/data"]
WORKDIR /data
USER memlookup

# Inside a container the server must listen on the container's interfaces,
# not on loopback: publish the port only where it should be reachable. Peers
# other than loopback are refused unless allowed: run with
# -e MEMLOOKUP_ALLOW=NETWORK (docker-compose.yml and kind/ do).
ENV MEMLOOKUP_BIND=0.0.0.0 \
    MEMLOOKUP_PORT=7400 \
    SERVER_DATA_DIR=/data
EXPOSE 7400 9400

HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["memlookup", "--timeout", "1", "--retries", "0", "127.0.0.1", "ping"]

CMD ["memlookup-server"]
