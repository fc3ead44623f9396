"""A batch message under ``--fsync always`` whose fsync fails: every write in it is undone
and forgotten, so resending the same batch (same request ids) applies them all."""

import errno
import os

import msgpack

from common.protocol import encode_batch, encode_request
from server.config import ServerConfig
from server.handler import Handler
from server.journaled_store import JournaledStore
from server.loop import Server
from server.persistence import Persistence


def test_a_failed_durable_batch_is_resent_whole(tmp_path, monkeypatch):
    # The real handler, store, journal and loop hooks, driven without sockets:
    # a failing fsync cannot be produced on demand, so os.fdatasync is replaced.
    store = JournaledStore()
    persistence = Persistence(tmp_path, "always", store)
    persistence.open()
    server = Server(ServerConfig(port=0), Handler(store))
    persistence.attach(server)
    before_reply = server.before_reply
    assert before_reply is not None  # attach installed the journal's hook
    frame = encode_batch([encode_request("set", "a", "1", options={"rid": "c:1"}),
                          encode_request("set", "b", "2", options={"rid": "c:2"})])
    try:
        def failing(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fdatasync", failing)
        reply = server.handler.handle(frame)
        before_reply(1)
        assert msgpack.unpackb(bytes(reply))[0] == 7  # PERSISTENCE, for the whole batch
        assert store.get("a") is None and store.get("b") is None
        monkeypatch.undo()
        persistence.broken = ""  # the disk is back (as after a restart)
        reply = server.handler.handle(frame)  # the client's resend: the same rids
        before_reply(1)
        assert msgpack.unpackb(bytes(reply)) == [0, [[0, True], [0, True]]]
        assert (store.get("a"), store.get("b")) == ("1", "2")
    finally:
        server.socket.close(linger=0)
        persistence.close()
