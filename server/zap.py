"""The ZAP handler thread: answers ZeroMQ's "may this peer connect?" questions.

ZeroMQ asks over an ``inproc://zeromq.zap.01`` socket, once per new
connection (RFC 27, ZAP). This thread only translates between that wire
format and :class:`server.auth.AccessPolicy`, which owns every decision.
"""

from __future__ import annotations

import logging
import threading

import zmq
from zmq.utils.monitor import parse_monitor_message

from server.auth import AccessPolicy

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"

#: Server-side handshake failures ZAP never hears of, and what they mean.
HANDSHAKE_FAILURES: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake failed (a plaintext client, or the wrong server key)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed (a plaintext client, or the wrong server key)",
}
MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL

#: How long the thread waits for a request before checking for stop.
POLL_INTERVAL_MS = 100


class ZapThread(threading.Thread):
    """Serves ZAP requests from sockets in ``context`` with ``policy``.

    The ZAP socket is bound in the constructor, so a server socket bound after
    it never sees a connection the policy did not check. ``monitor``, when
    given, is a monitor socket of the server's socket: handshakes that fail
    before ZAP is asked (a plaintext client at a CURVE server, a client with
    the wrong server key) are reported to the policy from it.
    """

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], policy: AccessPolicy,
                 monitor: zmq.Socket[bytes] | None = None) -> None:
        super().__init__(name="memlookup-zap", daemon=True)
        self.policy = policy
        self._stop_event = threading.Event()
        self._socket = context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(ZAP_ENDPOINT)
        self._monitor = monitor

    def run(self) -> None:
        socket, monitor = self._socket, self._monitor
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        try:
            while not self._stop_event.is_set():
                ready = dict(poller.poll(POLL_INTERVAL_MS))
                if socket in ready:
                    socket.send_multipart(self._answer(socket.recv_multipart()))
                if monitor is not None and monitor in ready:
                    event = parse_monitor_message(monitor.recv_multipart())
                    self.policy.handshake_failed(HANDSHAKE_FAILURES.get(event["event"], "handshake failed"))
        except zmq.ZMQError as exc:  # the context is being terminated
            if not self._stop_event.is_set():
                log.error("ZAP handler stopped: %s", exc)
        finally:
            socket.close(linger=0)
            if monitor is not None:
                monitor.close(linger=0)

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        if len(frames) < 6 or frames[0] != ZAP_VERSION:
            request_id = frames[1] if len(frames) > 1 else b""
            return [ZAP_VERSION, request_id, b"400", b"malformed ZAP request", b"", b""]
        _, request_id, _domain, address, _identity, mechanism = frames[:6]
        try:
            allowed, reason = self.policy.decide(
                address.decode("ascii", "replace"), mechanism.decode("ascii", "replace"), frames[6:]
            )
        except Exception:  # a policy bug must not leave ZeroMQ waiting forever
            log.exception("access policy failed; refusing the connection")
            allowed, reason = False, "internal error"
        if allowed:
            return [ZAP_VERSION, request_id, b"200", b"OK", b"", b""]
        return [ZAP_VERSION, request_id, b"400", reason.encode(), b"", b""]

    def stop(self) -> None:
        """Ask the thread to finish and wait for it."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=2)
