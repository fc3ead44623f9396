"""The hybrid logical clock that versions every write this server applies.

A hybrid logical clock (Kulkarni et al., 2014) reads as wall-clock
milliseconds, so versions from different nodes compare by when their writes
happened as far as the clocks agree, and it never goes backwards and never
issues the same version twice: when the wall clock has not moved past the
last version issued (or seen), the counter counts up instead. A version
received from another node (``putv``) moves the clock past it, so that every
write this node applies afterwards is newer than what it has seen: a node
that copies a record and then overwrites the key wins, whatever the clocks.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from common.versions import MAX_COUNTER, Version


class HybridLogicalClock:
    """Issues strictly increasing versions named after ``node``.

    Args:
        node: this server's node name (the versions' tie-break).
        wall_s: the wall clock in seconds; tests pass a fake one.
    """

    def __init__(self, node: str, wall_s: Callable[[], float] = time.time) -> None:
        self.node = sys.intern(node)
        self._wall_s = wall_s
        self._ms = 0
        self._counter = 0

    def now_ms(self) -> int:
        """The wall clock, in milliseconds."""
        return int(self._wall_s() * 1000)

    def issue(self) -> Version:
        """A version newer than every version issued or observed before."""
        now = int(self._wall_s() * 1000)
        if now > self._ms:
            self._ms, self._counter = now, 0
        elif self._counter < MAX_COUNTER:
            self._counter += 1
        else:  # 65,536 versions in one millisecond: borrow the next one
            self._ms, self._counter = self._ms + 1, 0
        return (self._ms, self._counter, self.node)

    def observe(self, version: Version) -> None:
        """Move past ``version`` (one received, or loaded at start): later versions issued are newer."""
        if (version[0], version[1]) > (self._ms, self._counter):
            self._ms, self._counter = version[0], version[1]

    @property
    def last(self) -> tuple[int, int]:
        """``(ms, counter)`` of the newest version issued or observed."""
        return self._ms, self._counter
