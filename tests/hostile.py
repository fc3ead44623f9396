"""Raw ZeroMQ peers for hostile-input tests: frames the real client would never send."""

from __future__ import annotations

import zmq


def read_status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` memory figure (``VmRSS``, ``VmHWM``) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class RawPeer:
    """A DEALER socket speaking REQ's envelope, so many requests can be in flight."""

    def __init__(self, node: str, context: zmq.Context[zmq.Socket[bytes]] | None = None, rcvhwm: int = 1000) -> None:
        self._context: zmq.Context[zmq.Socket[bytes]] = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self.socket.connect(f"tcp://{node}")

    def send(self, frame: bytes) -> None:
        self.socket.send_multipart([b"", frame])

    def recv(self, timeout_s: float) -> bytes:
        """The next reply body; raises TimeoutError after ``timeout_s``."""
        if not self.socket.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no reply within {timeout_s} s")
        return self.socket.recv_multipart()[-1]

    def close(self) -> None:
        self.socket.close(linger=0)
