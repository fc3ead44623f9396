"""A cluster client's view of a membership kept by the nodes: asked for, merged, turned into rings.

Nodes started with ``--join`` keep the cluster's membership (common/membership.py,
server/membership.py) and answer it to ``members``. A cluster client asks one
of the nodes it knows about every :data:`~common.membership.REFRESH_INTERVAL_S`
while it is used, merges the answer into its own view (newest entry wins) and,
when the epoch changed, places keys on the new rings. Servers without ``--join``
(or too old to know ``members``) make a static cluster: the nodes the client
was given, placed by their addresses, as before membership existed.
"""

from __future__ import annotations

from typing import Any

from client.requests import Command
from common.ops import OPS

#: The internal ops nodes and cluster clients send each other (route NONE: no client method).
MEMBERS: Command[dict[str, Any]] = Command(OPS["members"])
ANNOUNCE: Command[dict[str, bool]] = Command(OPS["announce"])
