"""Glob patterns for ``keys``, matched in time linear in the key's length.

The syntax is Python's ``fnmatch`` (``*``, ``?``, ``[seq]``, ``[!seq]``, no
escapes; docs/PROTOCOL.md section 9.7), and so is every answer. ``fnmatch``
itself translates a pattern to one regular expression, whose backtracking
makes ``"*" + "a" * 1000 + "b"`` take a millisecond per 1 KB key. Here the
pattern is cut at its ``*`` into parts that each match a fixed number of
characters: the first part must match at the start of the key, the last at
its end, and each part between is searched for from where the previous one
ended, leftmost first. Leftmost is always right, because a part found
earlier leaves more room to the ones after it, so nothing is ever retried.

A middle part made of plain characters is found with ``re``'s literal
search, which is linear (it skips with a prefix table, like Knuth-Morris-
Pratt). A middle part with ``?`` or ``[...]`` is tried at each position of
the key, which costs its length per position: such parts are limited to
:data:`common.limits.MAX_PATTERN_SEARCH_CHARS` characters in all.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable

from common.limits import MAX_PATTERN_SEARCH_CHARS

#: A matcher: True if the key matches.
Matcher = Callable[[str], bool]


class PatternTooComplex(ValueError):
    """The pattern's searched parts hold more ``?`` and ``[...]`` than the limit allows."""


#: One character of a pattern: a regex matching it, and the character itself if it is plain.
_Token = tuple[str, "str | None"]


def _tokens(pattern: str) -> list[_Token | None]:
    """The pattern as None for each run of ``*``, and a token for every other character or set.

    Character sets follow ``fnmatch.translate`` exactly (``[!...]`` negates,
    a ``]`` right after ``[`` or ``[!`` is literal, an unclosed ``[`` is a
    literal ``[``, ranges with the high end first match nothing).
    """
    tokens: list[_Token | None] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            if not tokens or tokens[-1] is not None:
                tokens.append(None)
        elif char == "?":
            tokens.append((".", None))
        elif char == "[":
            end = i
            if end < n and pattern[end] == "!":
                end += 1
            if end < n and pattern[end] == "]":
                end += 1
            while end < n and pattern[end] != "]":
                end += 1
            if end >= n:
                tokens.append(("\\[", "["))
            else:
                tokens.append((_char_set(pattern[i:end]), None))
                i = end + 1
        else:
            tokens.append((re.escape(char), char))
    return tokens


def _char_set(body: str) -> str:
    """The regex for the set ``[body]`` (body without its brackets), as ``fnmatch`` builds it."""
    if "-" not in body:
        stuff = body.replace("\\", r"\\")
    else:
        chunks = []
        start = 0
        k = 2 if body[0] == "!" else 1
        while True:
            k = body.find("-", k)
            if k < 0:
                break
            chunks.append(body[start:k])
            start = k + 1
            k += 3
        chunk = body[start:]
        if chunk:
            chunks.append(chunk)
        else:
            chunks[-1] += "-"
        for k in range(len(chunks) - 1, 0, -1):  # drop empty ranges, invalid in a regex
            if chunks[k - 1][-1] > chunks[k][0]:
                chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
                del chunks[k]
        stuff = "-".join(s.replace("\\", r"\\").replace("-", r"\-") for s in chunks)
    stuff = re.sub(r"([&~|])", r"\\\1", stuff)
    if not stuff:
        return "(?!)"  # an empty set matches nothing
    if stuff == "!":
        return "."
    if stuff[0] == "!":
        stuff = "^" + stuff[1:]
    elif stuff[0] in ("^", "["):
        stuff = "\\" + stuff
    return f"[{stuff}]"


class _Part:
    """A part of the pattern between two ``*``: a fixed number of characters."""

    __slots__ = ("length", "literal", "regex")

    def __init__(self, tokens: list[_Token]) -> None:
        self.length = len(tokens)
        #: The plain characters, if the part has no ``?`` or set; else None.
        self.literal: str | None = None
        if all(char is not None for _, char in tokens):
            self.literal = "".join(char for _, char in tokens)  # type: ignore[misc]
        self.regex = re.compile("".join(regex for regex, _ in tokens), re.DOTALL)


@functools.lru_cache(maxsize=64)
def compile_glob(pattern: str) -> Matcher | None:
    """A matcher for ``pattern``, or None if it matches every key (``*``).

    Raises:
        PatternTooComplex: its middle parts hold too many ``?`` and ``[...]``.
    """
    tokens = _tokens(pattern)
    parts: list[list[_Token]] = [[]]
    for token in tokens:
        if token is None:
            parts.append([])
        else:
            parts[-1].append(token)
    if len(parts) == 2 and not parts[0] and not parts[1]:
        return None
    compiled = [_Part(p) for p in parts]
    searched = sum(p.length for p in compiled[1:-1] if p.literal is None)
    if searched > MAX_PATTERN_SEARCH_CHARS:
        raise PatternTooComplex(
            f"pattern too complex: its parts between two '*' hold {searched} characters with '?' or "
            f"'[...]', more than {MAX_PATTERN_SEARCH_CHARS}")
    if len(compiled) == 1:
        return _exact(compiled[0])
    head, middle, tail = compiled[0], compiled[1:-1], compiled[-1]
    if not middle and head.literal is not None and tail.literal is not None:
        if not tail.literal:  # "prefix*", the commonest: one C call per key
            return operator.methodcaller("startswith", head.literal)
        if not head.literal:
            return operator.methodcaller("endswith", tail.literal)
    return functools.partial(_match, head, middle, tail)


def _exact(part: _Part) -> Matcher:
    if part.literal is not None:
        return part.literal.__eq__
    fullmatch, length = part.regex.fullmatch, part.length
    return lambda key: len(key) == length and fullmatch(key) is not None


def _match(head: _Part, middle: list[_Part], tail: _Part, key: str) -> bool:
    """``key`` against ``head*middle[0]*...*tail``: each part once, leftmost first."""
    end = len(key) - tail.length
    if end < head.length:
        return False
    if head.length:
        if head.literal is not None:
            if not key.startswith(head.literal):
                return False
        elif head.regex.match(key) is None:
            return False
    pos = head.length
    for part in middle:
        found = part.regex.search(key, pos, end)
        if found is None:
            return False
        pos = found.end()
    if not tail.length:
        return True
    if tail.literal is not None:
        return key.endswith(tail.literal)
    return tail.regex.match(key, end) is not None
