"""Types of the compiled loop (server/_cloop.pyx), for mypy."""

import zmq

from server.config import ServerConfig
from server.handler import Handler
from server.loop import LoopHooks, Server
from server.output import OutputQueue

class CompiledServer(Server):
    def __init__(self, config: ServerConfig, hooks: LoopHooks, output: OutputQueue,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None, handler: Handler | None = None) -> None: ...
