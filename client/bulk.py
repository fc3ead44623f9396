"""``memlookup NODE --pipe < FILE``: bulk loading, one command a line.

Each line is a command in the CLI's own words (``set KEY VALUE``, ``del KEY``,
``incr KEY 5``, ``set KEY VALUE --ttl 60`` ...), the command name in any case,
split like a shell would (``set greeting "hello world"``). Blank lines are
skipped. Each line is read by its command's own CLI parser and becomes a call
of the client method its row in the table of operations names, as on the
command line (:mod:`client.cli_parser`). A line that cannot be parsed, or that
the server refuses, is counted as an error and reported with its line number;
the other lines still run.

Speed comes from three things. Runs of plain ``set KEY VALUE`` lines are sent
as ``mset`` batches (checked against the server's limits here first, so one
bad pair cannot sink a batch), and the requests are pipelined: up to a window
of them are in flight while the next lines are read. A block of input that is
ASCII and holds nothing but plain ``set`` lines is read by one regular
expression (:func:`plain_set_lines`), with no Python code per line; any other
block is read line by line. Commands run in file order. Plain lines are split
with ``str.split``; only lines with quotes or backslashes pay for
:func:`shlex.split` (and for importing :mod:`shlex`).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NoReturn, TextIO

from client.cli_parser import PROCEDURES, UsageError, call_arguments, command_parsers, suggestion
from client.client import Client
from common.errors import MemlookupError
from common.ops import OPS, Op

#: Pairs per ``mset`` request by default (capped by the server's max_batch_keys).
DEFAULT_BATCH_KEYS = 1000

#: Requests in flight by default.
DEFAULT_WINDOW = 32

#: Bytes of input read at a time.
READ_BYTES = 1 << 16

#: Error lines printed before the rest are only counted.
MAX_ERRORS_SHOWN = 100

_NEEDS_SHLEX = ('"', "'", "\\")
#: Where a line is split into words: shlex's blanks (space, tab, CR, LF) and no
#: others, so a plain line and its quoted spelling read the same (str.split and
#: bytes.split would also split at form feed, vertical tab and, for str, NBSP).
_BLANKS_TO_SPACE = str.maketrans("\t\r\n", "   ")


def plain_set_lines(max_key_bytes: int, max_value_bytes: int) -> re.Pattern[str]:
    """A plain ``set KEY VALUE`` line of ASCII text, as :meth:`BulkLoader.feed_block` takes it line by line.

    The command in any case, words split at the blanks of :func:`shlex.split`,
    no quote or backslash, no word starting with ``-`` (an option), the key
    and value within the server's limits. A match starts at the start of a
    line and ends with its newline, so a block whose every line is such a
    line has as many matches as lines.
    """

    def word(max_bytes: int) -> str:
        more = "*" if max_bytes > 1 << 24 else f"{{0,{max_bytes - 1}}}"
        return rf"""([^- \t\r\n"'\\][^ \t\r\n"'\\]{more})"""

    key, value, blanks = word(max_key_bytes), word(max_value_bytes), r"[ \t\r]"
    return re.compile(rf"^{blanks}*[sS][eE][tT]{blanks}+{key}{blanks}+{value}{blanks}*\n", re.MULTILINE)


def _split_blanks(line: str) -> list[str]:
    return [word for word in line.translate(_BLANKS_TO_SPACE).split(" ") if word]


#: Commands a line may not hold: ``keys`` takes a request per page, ``stats``
#: and the procedures (``rebalance``, ``leave``, ``ready``) are reports, and
#: ``--pipe`` prints only errors.
NOT_IN_PIPE = frozenset({"keys", "stats", *PROCEDURES})

#: What the stream hands each command's callback: its result, or the
#: :class:`MemlookupError` the server's refusal stands for.
OnResult = Callable[[Any], None]


@dataclass
class Summary:
    """What a bulk load did."""

    lines: int = 0  # non-blank lines read
    sent: int = 0  # commands the server applied or answered
    errors: int = 0  # lines refused, here or by the server
    error_lines: list[tuple[int, str]] = field(default_factory=list)  # the first ones

    def error(self, line_number: int, message: str) -> None:
        self.errors += 1
        if len(self.error_lines) < MAX_ERRORS_SHOWN:
            self.error_lines.append((line_number, message))


class LineParser(argparse.ArgumentParser):
    """An argparse parser that raises :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise UsageError(message or "not a command")


def _no_stdin(op: Op) -> Callable[[bool], str]:
    def refuse(explicit: bool) -> str:
        raise UsageError(f"{op.name} needs a VALUE with --pipe (standard input is the command stream)")

    return refuse


class BulkLoader:
    """Streams commands to one node; see the module docstring.

    Args:
        client: the node's client (its timeout and retries apply).
        batch_keys: most pairs per ``mset``.
        window: most requests in flight.
    """

    def __init__(
        self,
        client: Client,
        batch_keys: int = DEFAULT_BATCH_KEYS,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.parsers = command_parsers(LineParser)
        self.summary = Summary()
        limits = client.stats().get("limits", {})
        self.max_key_bytes = int(limits.get("max_key_bytes", 1 << 62))
        self.max_value_bytes = int(limits.get("max_value_bytes", 1 << 62))
        self.batch_keys = max(1, min(batch_keys, int(limits.get("max_batch_keys", batch_keys))))
        self._plain_sets = plain_set_lines(self.max_key_bytes, self.max_value_bytes)
        #: Sends each command at once (its own batches: mset); results come back in order,
        #: each to the callback queued with its command.
        self.stream = client.stream(self._on_result, window=window, per_message=1)
        self._callbacks: collections.deque[OnResult] = collections.deque()
        self._pairs: dict[str, str] = {}
        self._pairs_first_line = 0  # line number of the batch's first pair
        self._pairs_lines = 0  # lines in the batch (a key set twice counts twice)

    # -- reading ---------------------------------------------------------

    def feed_block(self, first_line_number: int, block: bytes) -> int:
        """Take consecutive input lines, each ending with a newline; returns how many.

        A block of nothing but plain ``set KEY VALUE`` lines in ASCII is read
        in one go (:func:`plain_set_lines`); any other, line by line.
        """
        lines = block.count(b"\n")
        if not self._feed_plain_block(first_line_number, block, lines):
            self._feed_lines(first_line_number, block.split(b"\n")[:-1])
        return lines

    def _feed_lines(self, first_line_number: int, lines: list[bytes]) -> None:
        """Take lines one by one. Plain ``set KEY VALUE`` lines take a fast path:
        split as bytes, sizes checked in bytes, added to the pending ``mset``
        batch. A key set twice in one batch keeps its last value, as running
        the lines in order would."""
        pairs = self._pairs
        max_key, max_value, batch_keys = self.max_key_bytes, self.max_value_bytes, self.batch_keys
        for line_number, raw in enumerate(lines, first_line_number):
            words = raw.split()
            if (
                len(words) == 3
                and words[0].lower() == b"set"
                and b'"' not in raw and b"'" not in raw and b"\\" not in raw
                and b"\x0b" not in raw and b"\x0c" not in raw  # blanks to bytes.split, not to shlex
                and words[1][:1] != b"-" and words[2][:1] != b"-"
                and len(words[1]) <= max_key and len(words[2]) <= max_value
            ):
                try:
                    key, value = words[1].decode(), words[2].decode()
                except UnicodeDecodeError:
                    self.feed(line_number, raw)  # reported there
                    pairs = self._pairs
                    continue
                if not pairs:
                    self._pairs_first_line = line_number
                pairs[key] = value
                self._pairs_lines += 1
                self.summary.lines += 1
                if len(pairs) >= batch_keys:
                    self._flush_pairs()
                    pairs = self._pairs
            elif words:
                self.feed(line_number, raw)  # sends the pending batch first
                pairs = self._pairs

    def _feed_plain_block(self, first_line_number: int, block: bytes, lines: int) -> bool:
        """Add the ``lines`` of ``block`` to the pending batches if every one is a plain ``set`` in ASCII;
        False if not."""
        if not block.isascii():
            return False
        found = self._plain_sets.findall(block.decode("ascii"))
        if len(found) != lines:
            return False
        start, batch_keys = 0, self.batch_keys
        while start < len(found):
            if not self._pairs:
                self._pairs_first_line = first_line_number + start
            taken = found[start:start + batch_keys - len(self._pairs)]
            self._pairs.update(taken)
            self._pairs_lines += len(taken)
            self.summary.lines += len(taken)
            start += len(taken)
            if len(self._pairs) >= batch_keys:
                self._flush_pairs()
        return True

    def feed(self, line_number: int, raw: bytes) -> None:
        """Take one line of input (with or without its newline)."""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.summary.lines += 1
            self.summary.error(line_number, f"not UTF-8 text (byte {exc.start})")
            return
        if any(mark in line for mark in _NEEDS_SHLEX):
            import shlex  # here: a file of plain lines never needs it

            try:
                words = shlex.split(line)
            except ValueError as exc:
                self.summary.lines += 1
                self.summary.error(line_number, f"cannot split the line: {exc}")
                return
        else:
            words = _split_blanks(line)
        if not words:
            return
        self.summary.lines += 1
        self._flush_pairs()
        try:
            self._queue_command(line_number, words[0].lower(), words[1:])
        except UsageError as exc:
            self.summary.error(line_number, str(exc).strip())

    def _flush_pairs(self) -> None:
        if not self._pairs:
            return
        pairs, first, count = self._pairs, self._pairs_first_line, self._pairs_lines
        self._pairs, self._pairs_lines = {}, 0
        self.stream.mset(pairs)
        self._callbacks.append(self._batch_result(first, count))

    def _on_result(self, result: Any) -> None:
        self._callbacks.popleft()(result)

    def _batch_result(self, first_line: int, count: int) -> OnResult:
        def on_result(result: Any) -> None:
            if isinstance(result, MemlookupError):  # the whole batch refused (memory, persistence)
                self.summary.errors += count
                self.summary.error_lines.append((first_line, f"{result} ({count} set lines from here refused)"))
            else:
                self.summary.sent += count

        return on_result

    def _queue_command(self, line_number: int, name: str, words: list[str]) -> None:
        """Parse a line with its command's CLI parser and queue the call its row names."""
        parser = self.parsers.get(name)
        if parser is None:
            raise UsageError(f"unknown command {name[:40]!r}{suggestion(name)}")
        if name in NOT_IN_PIPE:
            raise UsageError(f"{name} is not available with --pipe")
        op = OPS[name]
        kwargs = call_arguments(op, parser.parse_args(words), _no_stdin(op))
        getattr(self.stream, op.method)(**kwargs)  # answered and counted, not printed
        self._callbacks.append(self._line_result(line_number))

    def _line_result(self, line_number: int) -> OnResult:
        def on_result(result: Any) -> None:
            if isinstance(result, MemlookupError):
                self.summary.error(line_number, str(result))
            else:
                self.summary.sent += 1

        return on_result

    def finish(self) -> Summary:
        """Send what is still batched and wait for every reply."""
        self._flush_pairs()
        self.stream.drain()
        return self.summary


def run(
    client: Client,
    source: BinaryIO,
    report: TextIO,
    progress: bool,
    batch_keys: int = DEFAULT_BATCH_KEYS,
    window: int = DEFAULT_WINDOW,
) -> Summary:
    """Load every line of ``source``; errors and the summary go to ``report``.

    ``progress`` shows a bar (bytes of a regular file, else lines) on stderr.
    """
    bar = _progress_bar(source) if progress else None
    line_number = done_bytes = 0
    loader = BulkLoader(client, batch_keys, window)
    with loader.stream:
        for block in _blocks(source):
            line_number += loader.feed_block(line_number + 1, block)
            if bar is not None:
                done_bytes += len(block)
                bar.update((done_bytes if bar.total else line_number) - bar.n)
        summary = loader.finish()
    if bar is not None:
        bar.close()
    for number, message in sorted(summary.error_lines):
        print(f"line {number}: {message}", file=report)
    if summary.errors > len(summary.error_lines):
        print(f"... {summary.errors - len(summary.error_lines)} more errors", file=report)
    print(f"sent: {summary.sent}, errors: {summary.errors}, lines: {summary.lines}", file=report)
    return summary


def _blocks(source: BinaryIO) -> Iterator[bytes]:
    """``source`` in blocks of whole lines of about :data:`READ_BYTES`, each ending with a newline
    (one is added to a last line without it)."""
    partial: list[bytes] = []  # a line longer than a read, so far
    while data := source.read(READ_BYTES):
        cut = data.rfind(b"\n") + 1
        if not cut:
            partial.append(data)
            continue
        yield b"".join((*partial, data[:cut])) if partial else data[:cut]
        partial = [data[cut:]] if cut < len(data) else []
    if partial:
        yield b"".join(partial) + b"\n"


def _progress_bar(source: BinaryIO) -> Any:
    from tqdm import tqdm

    try:
        info = os.fstat(source.fileno())
        total = info.st_size if stat.S_ISREG(info.st_mode) else None
    except (OSError, AttributeError, ValueError):
        total = None
    if total:
        return tqdm(total=total, unit="B", unit_scale=True, desc="loading", file=sys.stderr)
    return tqdm(unit=" lines", desc="loading", file=sys.stderr)
