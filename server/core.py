"""Which core runs the socket loop: the compiled one (server/_cloop.pyx) or the pure-Python one (server/loop.py).

Chosen at import, as msgpack chooses between ``_cmsgpack`` and ``fallback``:
the compiled core when its extension imports, the Python core when the
environment variable :data:`PURE_PYTHON_ENV` is ``1`` or the extension is
missing (no compiler where memlookup was installed) or cannot load. Both
answer every request with the same bytes (tests/test_cores.py).
"""

from __future__ import annotations

import os

import zmq

from server.config import ServerConfig
from server.handler import Handler
from server.loop import LoopHooks, Server
from server.output import OutputQueue

#: Set to 1 to run the pure-Python core even where the compiled one is built.
PURE_PYTHON_ENV = "MEMLOOKUP_PURE_PYTHON"

_compiled: type[Server] | None = None
if os.environ.get(PURE_PYTHON_ENV) == "1":
    #: How the start-up line names the core that runs.
    CORE_DESCRIPTION = f"pure-Python core ({PURE_PYTHON_ENV}=1)"
else:
    try:
        from server._cloop import CompiledServer as _compiled
    except ImportError as exc:
        CORE_DESCRIPTION = f"pure-Python core (no compiled core: {exc})"
    else:
        CORE_DESCRIPTION = "compiled core"


def make_server(config: ServerConfig, hooks: LoopHooks, output: OutputQueue,
                context: zmq.Context[zmq.Socket[bytes]], plain_handler: Handler | None) -> Server:
    """The loop of the core that runs (see :class:`server.loop.Server` for the arguments).

    ``plain_handler``: the Handler when ``hooks.handle`` is its own ``handle``
    and no memory cap takes part, so the compiled core may answer the
    commonest requests from its store itself; None otherwise.
    """
    if _compiled is None:
        return Server(config, hooks, output, context)
    return _compiled(config, hooks, output, context, plain_handler)  # type: ignore[call-arg]
