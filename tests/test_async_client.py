"""What only the asyncio clients have to get right: cancellation, many tasks, their own ZeroMQ context.

Everything else they share with the blocking clients is tested by running
the same tests on both (tests/test_client.py, test_pipeline.py, test_retry.py,
test_cluster_client.py, through tests/awaited.py).
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import msgpack
import pytest
import zmq
import zmq.asyncio

from client import AsyncClient, Client, MemlookupError, NodeUnavailableError, TransportError
from common.protocol import Status, encode_reply
from tests.servers import ROOT, ServerProcess


class Unanswering:
    """A ROUTER that answers every request at once with ``answer to KEY``, except
    those whose key starts with ``slow``: those it never answers."""

    def __init__(self) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.node = f"127.0.0.1:{self.port}"
        self.requests: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self.router.poll(20):
                frames = self.router.recv_multipart()
                key = msgpack.unpackb(frames[-1])[1]
                self.requests.append(key)
                if not key.startswith("slow"):
                    self.router.send_multipart([*frames[:-1], encode_reply(Status.OK, f"answer to {key}")])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.router.close(linger=0)
        self.context.term()


@pytest.fixture
def unanswering() -> Iterator[Unanswering]:
    peer = Unanswering()
    yield peer
    peer.close()


def test_a_cancelled_call_never_leaves_its_reply_for_the_next_call(unanswering: Unanswering) -> None:
    """The next call takes the cancelled call's connection (the pool's last in, first out):
    it must be a new socket, not the one still waiting for the cancelled call's reply."""

    async def scenario() -> list[str | None]:
        async with AsyncClient(unanswering.node, timeout_s=5, retries=0) as table:
            assert await table.get("warm") == "answer to warm"  # one connection, now idle in the pool
            waiting = asyncio.create_task(table.get("slow"))
            await asyncio.sleep(0.2)  # sent, and waiting for its reply
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(table.get("slow-too"), 0.2)  # cancelled by wait_for
            return [await table.get("next"), await table.get("after")]

    assert asyncio.run(scenario()) == ["answer to next", "answer to after"]
    assert unanswering.requests == ["warm", "slow", "slow-too", "next", "after"]


def test_a_cancelled_pipeline_leaves_nothing_for_the_next_one(unanswering: Unanswering) -> None:
    """A cancelled execute abandons its commands: the next execute on the same
    connection neither waits for their replies nor sends them again."""

    async def scenario() -> list[object]:
        async with AsyncClient(unanswering.node, timeout_s=0.5, retries=0) as table:
            stuck = table.pipeline(per_message=1)
            stuck.get("slow").get("fast")
            waiting = asyncio.create_task(stuck.execute())
            await asyncio.sleep(0.2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            return await table.pipeline(per_message=1).get("next").execute()

    assert asyncio.run(scenario()) == ["answer to next"]
    assert unanswering.requests == ["slow", "fast", "next"]


def test_one_tasks_wait_does_not_hold_up_another_tasks_call(unanswering: Unanswering) -> None:
    async def scenario() -> None:
        async with AsyncClient(unanswering.node, timeout_s=5, retries=0) as table:
            waiting = asyncio.create_task(table.get("slow"))
            await asyncio.sleep(0.1)
            assert await table.get("fast") == "answer to fast"
            assert not waiting.done()
            waiting.cancel()

    asyncio.run(scenario())


async def _hammer(table: AsyncClient, task_no: int, ops: int) -> list[str]:
    """Mixed operations on this task's own keys; what came back wrong or raised."""
    rng = random.Random(task_no)
    keys = [f"t{task_no}:k{i}" for i in range(4)]
    model: dict[str, str | None] = dict.fromkeys(keys)
    count = 0
    problems: list[str] = []
    got: object
    want: object
    for n in range(ops):
        key, value, roll = rng.choice(keys), f"{task_no}:{n}", rng.random()
        try:
            if roll < 0.3:
                got, want = await table.set(key, value), True
                model[key] = value
            elif roll < 0.6:
                got, want = await table.get(key), model[key]
            elif roll < 0.7:
                got, want = await table.delete(key), model[key] is not None
                model[key] = None
            elif roll < 0.85:
                count += 1
                got, want = await table.incr(f"t{task_no}:n"), count
            else:
                got, want = await table.mget(keys), [model[k] for k in keys]
        except MemlookupError as exc:
            problems.append(f"task {task_no} op {n}: {exc!r}")
            continue
        if got != want:
            problems.append(f"task {task_no} op {n}: {got!r} instead of {want!r}")
    return problems


def test_many_tasks_share_one_client_and_each_gets_its_own_answers(server: ServerProcess) -> None:
    async def scenario() -> tuple[list[str], int]:
        async with AsyncClient(server.node, timeout_s=10, retries=0) as table:
            outcomes = await asyncio.gather(*(_hammer(table, task, 150) for task in range(50)))
            return [problem for problems in outcomes for problem in problems], (await table.stats())["ops"]["incr"]

    problems, increments = asyncio.run(scenario())
    assert problems == []
    assert increments > 0


def test_a_terminated_context_is_a_transport_error(server: ServerProcess) -> None:
    async def scenario() -> None:
        context = zmq.asyncio.Context()
        table = AsyncClient(server.node, timeout_s=2, retries=0, context=context)
        assert await table.set("k", "v")
        table.close()
        context.term()
        with pytest.raises(TransportError, match="context was terminated"):
            await table.get("k")
        with pytest.raises(TransportError, match="context was terminated"):
            await table.pipeline().get("k").execute()

    asyncio.run(scenario())


def test_a_stopped_node_is_node_unavailable_and_the_client_recovers(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    port = server.port

    async def call() -> str | None:
        return await table.get("k")

    table = AsyncClient(server.node, timeout_s=0.2, retries=1)
    server.stop()
    with pytest.raises(NodeUnavailableError, match=r"2 attempts of 0\.2 s"):
        asyncio.run(call())
    start_server("--port", str(port))
    assert asyncio.run(call()) is None  # a new event loop: the client's sockets follow
    table.close()


def test_importing_the_library_does_not_import_asyncio() -> None:
    """The CLI and blocking programs pay for asyncio only when they use AsyncClient."""
    code = ("import sys, client, client.cli; assert 'asyncio' not in sys.modules; "
            "from client import AsyncClient, AsyncClusterClient; assert 'asyncio' in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_the_readme_asyncio_example_runs_as_written(server: ServerProcess) -> None:
    readme = (ROOT / "README.md").read_text()
    example = next(block for block in readme.split("```python\n")[1:] if "AsyncClient(" in block).split("```")[0]
    example = example.replace("127.0.0.1:7400", server.node).replace("from memlookup.client", "from client")
    exec(compile(example, "README.md", "exec"), {})
    with Client(server.node, timeout_s=2) as table:
        assert table.mget(["norway", "visits"]) == ["oslo", "10"]
