"""A batch message under ``--fsync always`` whose fsync fails: every write in it is undone
and forgotten, so resending the same batch (same request ids) applies them all."""

import errno
import os
from pathlib import Path

import msgpack
import pytest

from common.protocol import encode_batch, encode_request
from server.app import build_server
from server.config import ServerConfig


def test_a_failed_durable_batch_is_resent_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The server as python -m server assembles it, its loop's hooks driven
    # without sockets: a failing fsync cannot be produced on demand, so
    # os.fdatasync is replaced.
    with build_server(ServerConfig(port=0, data_dir=str(tmp_path), fsync="always")) as app:
        hooks, store = app.server.hooks, app.handler.store
        assert hooks.before_reply is not None and app.persistence is not None
        frame = encode_batch([encode_request("set", "a", "1", options={"rid": "c:1"}),
                              encode_request("set", "b", "2", options={"rid": "c:2"})])

        def failing(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fdatasync", failing)
        reply = hooks.handle(frame)
        hooks.before_reply(1)
        assert msgpack.unpackb(bytes(reply))[0] == 7  # PERSISTENCE, for the whole batch
        assert store.get("a") is None and store.get("b") is None
        monkeypatch.undo()
        app.persistence.journal.broken = None  # the disk is back (as after a restart)
        reply = hooks.handle(frame)  # the client's resend: the same rids
        hooks.before_reply(1)
        assert msgpack.unpackb(bytes(reply)) == [0, [[0, True], [0, True]]]
        assert (store.get("a"), store.get("b")) == ("1", "2")
