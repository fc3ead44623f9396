"""The ``keys`` glob matcher: the same answers as ``fnmatch``, without its backtracking."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.limits import MAX_PATTERN_SEARCH_CHARS
from server.glob_match import PatternTooComplex, compile_glob

# Small alphabets, so that patterns and keys meet often; every character that means something to a glob.
PATTERNS = st.text(alphabet="ab*?[]!-^\\\n", max_size=10)
KEYS = st.text(alphabet="ab-^]![\\\n*?", max_size=10)


def _matches(pattern: str, key: str) -> bool:
    matcher = compile_glob(pattern)
    return True if matcher is None else matcher(key)


@settings(max_examples=3000, deadline=None)
@given(PATTERNS, KEYS)
def test_every_answer_is_fnmatchs(pattern, key):
    assert _matches(pattern, key) == fnmatch.fnmatchcase(key, pattern)


@pytest.mark.parametrize("pattern, key, expected", [
    ("*" + "a" * 1000 + "b", "a" * 1024, False),
    ("*" + "a" * 1000 + "b", "x" * 23 + "a" * 1000 + "b", True),
    ("*" + "a" * 1000 + "b*", "a" * 1000 + "b" + "a" * 23, True),
    ("user:*", "user:42", True),
    ("user:*", "users:42", False),
    ("*[!0-9]", "abc", True),
    ("*[!0-9]", "ab1", False),
    ("[]]x", "]x", True),
    ("[z-a]", "m", False),  # a range high end first matches nothing, as in fnmatch
    ("a?c*d?f", "abcXXdef", True),
    ("a*b*c", "acb", False),
    ("[*]", "*", True),
    ("*", "", True),
    ("", "", True),
    ("", "a", False),
])
def test_examples(pattern, key, expected):
    assert _matches(pattern, key) is expected == fnmatch.fnmatchcase(key, pattern)


def test_sets_and_question_marks_between_stars_are_limited():
    allowed = "*" + "?" * (MAX_PATTERN_SEARCH_CHARS - 1) + "x*"
    assert compile_glob(allowed) is not None
    with pytest.raises(PatternTooComplex, match="pattern too complex"):
        compile_glob("*" + "?" * MAX_PATTERN_SEARCH_CHARS + "x*")
    # At the start or the end a part is tried once per key, so it may be as long as the pattern.
    assert compile_glob("?" * 1000 + "*" + "[ab]" * 200) is not None
    # Plain characters between stars are found in linear time, so they are not limited.
    assert compile_glob("*" + "a" * 1000 + "*") is not None
