"""Which core runs the socket loop: the compiled one (server/_cloop.pyx) or the pure-Python one (server/loop.py).

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
from server.loop import LoopHooks, Server
from server.output import OutputQueue

#: Set to 1 to run the pure-Python core even where the compiled one is built.
PURE_PYTHON_ENV = "MEMLOOKUP_PURE_PYTHON"

#: The sources the compiled core is built from or reaches into: in a checkout,
#: a compiled core older than any of them was built from other sources (a
#: ``git pull`` without a rebuild) and may no longer fit the Python it calls.
_SOURCES = ("_cloop.pyx", "loop.py", "handler.py", "output.py")


def _stale_build() -> str | None:
    """The newer source's name, if the compiled core in a checkout is older than one of its sources."""
    spec = importlib.util.find_spec(f"{__package__}._cloop")
    if spec is None or spec.origin is None or not os.path.exists(spec.origin):
        return None
    built_at = os.stat(spec.origin).st_mtime
    here = Path(__file__).parent
    if not (here / _SOURCES[0]).exists():
        return None  # installed: the build and its sources came together
    return next((name for name in _SOURCES if (here / name).stat().st_mtime > built_at), None)


_compiled: type[Server] | None = None
_stale = None if os.environ.get(PURE_PYTHON_ENV) == "1" else _stale_build()
if os.environ.get(PURE_PYTHON_ENV) == "1":
    #: How the start-up line names the core that runs.
    CORE_DESCRIPTION = f"pure-Python core ({PURE_PYTHON_ENV}=1)"
elif _stale is not None:
    CORE_DESCRIPTION = (f"pure-Python core (the compiled core is older than server/{_stale}: "
                        "rebuild it with python setup.py build_ext --inplace)")
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
