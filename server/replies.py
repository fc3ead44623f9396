"""The replies of recent writes, by request id: a client's retry is answered, not applied twice.

A write that carries a request id (``rid``, docs/PROTOCOL.md section 8) and
was applied has its reply remembered under ``(op, rid)``; the same request
arriving again gets that reply instead of running again. The newest
:data:`RECENT_REPLIES` are kept. The handler remembers and looks up; with a
data dir, persistence journals each batch's new replies with its changes,
forgets them if the batch is undone, copies them into snapshots, and
restores them at start, so a retry after a crash is answered too.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Iterator

#: How many write replies are remembered by request id.
RECENT_REPLIES = 10_000

#: A remembered reply: ``((op, rid), reply frame)``.
Remembered = tuple[tuple[str, str], bytes]


class RememberedReplies:
    """The newest :data:`RECENT_REPLIES` write replies by ``(op, rid)``, oldest first."""

    def __init__(self) -> None:
        self._recent: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        #: Replies remembered so far (see :meth:`since`).
        self.count = 0
        #: The reply remembered for ``(op, rid)``, or None (the dict's own method: the handler's hot path).
        self.get = self._recent.get

    def __len__(self) -> int:
        return len(self._recent)

    def remember(self, key: tuple[str, str], reply: bytes) -> None:
        """Remember the reply of an applied write (a refused one may be retried, so it is not)."""
        recent = self._recent
        recent[key] = reply
        self.count += 1
        if len(recent) > RECENT_REPLIES:
            recent.popitem(last=False)

    def since(self, count: int) -> list[Remembered]:
        """The replies remembered since :attr:`count` was ``count``, oldest first
        (one ``batch`` request can remember many)."""
        new = min(self.count - count, len(self._recent))
        return list(itertools.islice(reversed(self._recent.items()), new))[::-1]

    def snapshot(self) -> Iterator[Remembered]:
        """Every remembered reply, oldest first, for a snapshot.

        Only the keys are copied now (a copy of 10,000 pairs would cost a
        compaction's start about 1 ms more); each reply is looked up as the
        iterator reaches it, and one forgotten or evicted by then is skipped
        (an evicted one would not survive a restart either: newer ones
        replace it).
        """
        keys, recent = list(self._recent), self._recent
        return ((key, reply) for key in keys if (reply := recent.get(key)) is not None)

    def restore(self, replies: Iterable[Remembered]) -> None:
        """Remember replies recovered from a data dir, given oldest first; the newest
        RECENT_REPLIES are kept."""
        recent = self._recent
        for key, reply in replies:
            recent.pop(key, None)
            recent[key] = reply
        while len(recent) > RECENT_REPLIES:
            recent.popitem(last=False)

    def forget(self, key: tuple[str, str]) -> None:
        """Forget the reply of ``(op, rid)``: its write was undone, so a retry must run again."""
        self._recent.pop(key, None)
