"""Start real memlookup servers and run the real CLI, for tests.

Every server is a ``python -m server`` subprocess on a free port (``--port 0``;
the port is read from its "listening on" log line), and is always stopped by
the fixture that started it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on tcp://(\[?[^\]\s]*\]?|[^:\s]+):(\d+)")


class ServerProcess:
    """A running ``python -m server``; ``node`` is its ``host:port``.

    ``prefix`` goes before the command (``ip netns exec NS``); ``program``
    replaces ``python -m server`` (an installed ``memlookup-server``).
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        host: str = "127.0.0.1",
        start_timeout_s: float = 15.0,
        program: Sequence[str] | None = None,
    ) -> None:
        self.args = list(args)
        self.host = host
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.port = 0
        full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        if not any(a.startswith("--port") for a in self.args) and "MEMLOOKUP_PORT" not in (env or {}):
            self.args += ["--port", "0"]
        self.proc = subprocess.Popen(
            [*prefix, *(program if program is not None else (sys.executable, "-m", "server")), *self.args],
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._listening.wait(start_timeout_s):
            self.kill()
            raise RuntimeError("server did not start:\n" + self.log)

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = _LISTENING.search(line)
            if match and not self._listening.is_set():
                self.port = int(match.group(2))
                self._listening.set()
        self._listening.set()  # exited: stop waiting

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def node(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def wait_for_log(self, text: str, timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log:
                return True
            time.sleep(0.02)
        return False

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout_s: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if it is still there after ``timeout_s``; returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def runs_compiled_core(log: str) -> bool:
    """Whether a server's start-up line says the compiled core runs (a pure-Python
    core's line may name the compiled core too, saying why it does not run)."""
    return "compiled core" in log and "pure-Python core" not in log


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_cli(*args: str, input: str | bytes | None = None, timeout_s: float = 30.0,
            env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``python -m client ARGS``; returns the finished process (text output)."""
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "client", *args],
        cwd=ROOT,
        input=data if data is not None else b"",
        capture_output=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def run_server(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m server ARGS`` expecting it to exit on its own (refusing to start)."""
    return subprocess.run(
        [sys.executable, "-m", "server", "--port", "0", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def run_cli_imports(*args: str, input: str | bytes | None = None,
                    ) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """:func:`run_cli` under ``python -X importtime``: the finished process (its
    stderr without the import lines), and the names of the modules it imported."""
    result = run_cli(*args, input=input, env={"PYTHONPROFILEIMPORTTIME": "1"})
    lines = result.stderr.splitlines(keepends=True)
    result.stderr = "".join(line for line in lines if not line.startswith("import time:"))
    return result, {line.split("|")[2].strip() for line in lines
                    if line.startswith("import time:") and "imported package" not in line}
