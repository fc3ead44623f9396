"""Which core runs: the compiled loop and compact table (server/_cloop.pyx, server/_cstore.pyx) or the
pure-Python loop and table (server/loop.py, server/store.py).

Chosen at import, as msgpack chooses between ``_cmsgpack`` and ``fallback``:
the compiled core when its extension imports, the Python core when the
environment variable :data:`PURE_PYTHON_ENV` is ``1`` or the extension is
missing (no compiler where memlookup was installed) or cannot load. Both
answer every request with the same bytes (tests/test_cores.py).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import zmq

from server.config import ServerConfig
from server.handler import Handler
from server.journaled_store import Journaled, JournaledStore
from server.loop import LoopHooks, Server
from server.output import OutputQueue
from server.store import Store

#: Set to 1 to run the pure-Python core even where the compiled one is built.
PURE_PYTHON_ENV = "MEMLOOKUP_PURE_PYTHON"

#: The compiled core's sources (the loop, the compact table): in a checkout, a
#: compiled module older than its source was built from another version (a
#: ``git pull`` without a rebuild), which may no longer fit the Python it
#: calls. (Only these files: a rebuild after a change elsewhere leaves the
#: compiled files as they were, with their old time.)
_SOURCES = ("_cloop", "_cstore")


def _stale_build() -> str | None:
    """The name of a source in a checkout that is newer than its compiled module, if there is one."""
    here = Path(__file__).parent
    for module in _SOURCES:
        spec = importlib.util.find_spec(f"{__package__}.{module}")
        if spec is None or spec.origin is None or not os.path.exists(spec.origin):
            continue
        source = here / f"{module}.pyx"
        if source.exists() and source.stat().st_mtime > os.stat(spec.origin).st_mtime:
            return source.name  # (installed, there is no source: the build and it came together)
    return None


_compiled: type[Server] | None = None
#: The table's class, and its journaled class for a data directory: the
#: compact table (server/_cstore.pyx) with the compiled core, else server/store.py's.
TABLE: type[Store] = Store
JOURNALED_TABLE: type[Journaled] = JournaledStore
_stale = None if os.environ.get(PURE_PYTHON_ENV) == "1" else _stale_build()
if os.environ.get(PURE_PYTHON_ENV) == "1":
    #: How the start-up line names the core that runs, and its table.
    CORE_DESCRIPTION = f"pure-Python core ({PURE_PYTHON_ENV}=1)"
elif _stale is not None:
    CORE_DESCRIPTION = (f"pure-Python core (the compiled core is older than server/{_stale}: "
                        "rebuild it with python setup.py build_ext --inplace)")
else:
    try:
        from server._cloop import CompiledServer
        from server._cstore import CompactStore, JournaledCompactStore
    except ImportError as exc:
        CORE_DESCRIPTION = f"pure-Python core (no compiled core: {exc})"
    else:
        _compiled, TABLE, JOURNALED_TABLE = CompiledServer, CompactStore, JournaledCompactStore
        CORE_DESCRIPTION = "compiled core, compact table"


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
