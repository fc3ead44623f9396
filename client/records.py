"""Versioned records, as a cluster client reads, compares and copies them: no I/O.

A record is what the servers' cluster ops carry (docs/PROTOCOL.md):
``[key, value, version, deadline]``, ``value`` None for a tombstone (a
delete), ``version`` ``[ms, counter, node]`` ordered lexicographically (a
hybrid logical clock stamp; ``[0, 0, ""]`` is older than everything), and
``deadline`` wall-clock seconds or None. The newest version of a key wins
everywhere: answering a read, repairing a stale owner, rebalancing.

The commands here are internal (no client method sends them): ``getv``,
``putv`` and ``scanv``, and each write op with option ``rec`` (answered with
``[result, records]``: the records the write left, for the other owners).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from client.requests import Command, Request
from common.errors import ServerError
from common.ops import OPS, REC_OPTION

T = TypeVar("T")

#: ``[key, value or None (a tombstone), [ms, counter, node], deadline_s or None]``.
Record = list[Any]

GETV: Command[list[Record | None]] = Command(OPS["getv"])
PUTV: Command[list[bool]] = Command(OPS["putv"])
SCANV: Command[tuple[int, list[Record]]] = Command(OPS["scanv"], lambda page: (page[0], page[1]))

#: Each write op as its first owner applies it: the raw ``[result, records]`` reply.
WITH_RECORDS: dict[str, Command[tuple[Any, list[Record | None]]]] = {
    name: Command(OPS[name], lambda reply: (reply[0], reply[1])) for name in ("set", "del", "mset", "incr", "cas")
}


class _BestEffort(Command[T | ServerError]):
    """A command whose refusal is its result instead of raised: for a repair that
    must not fail the read that made it."""

    __slots__ = ()

    def parse(self, frame: bytes) -> T | ServerError:
        try:
            return super().parse(frame)
        except ServerError as exc:
            return exc


REPAIR: Command[list[bool] | ServerError] = _BestEffort(OPS["putv"])


def with_records(request: Request[Any]) -> Request[tuple[Any, list[Record | None]]]:
    """``request`` (a write) asking for the records it leaves: the first owner's copy of the write."""
    options = dict(request.options) if request.options else {}
    options[REC_OPTION] = True
    return Request(WITH_RECORDS[request.command.name], request.args, options)


def version(record: Record) -> tuple[int, int, str]:
    """The record's version, comparable with ``<``."""
    ms, counter, node = record[2]
    return ms, counter, node


def newest(records: Iterable[Record | None]) -> Record | None:
    """The record with the newest version (a tombstone included); None if there is none."""
    best: Record | None = None
    for record in records:
        if record is not None and (best is None or version(record) > version(best)):
            best = record
    return best


def stale(held: Record | None, latest: Record) -> bool:
    """Whether a node holding ``held`` needs ``latest`` (read-repair): it holds an older
    version, or nothing while ``latest`` is a value (a tombstone where nothing is held
    would bring nothing back)."""
    if held is None:
        return latest[1] is not None
    return version(held) < version(latest)


def value(record: Record | None) -> str | None:
    """What ``get`` answers from the newest record: its value; None for a tombstone or nothing."""
    return None if record is None else record[1]
