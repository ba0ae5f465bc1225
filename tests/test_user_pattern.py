"""User patterns run on RE2: linear in the text whatever the pattern, and a pattern RE2 cannot run is refused with
what to write instead."""
from __future__ import annotations

import pytest

from mcp_server.core.user_pattern import MAX_SUBJECT_CHARS, UserPatternError, compile_user_pattern


def test_a_backtracking_pattern_runs_in_linear_time():
    pattern = compile_user_pattern(r"(a+)+$")
    # Python's re takes exponential time on this (the daemon freeze); RE2 answers in one pass.
    assert not pattern.search("a" * 30 + "b")
    assert pattern.search("x" + "a" * 40)
    assert compile_user_pattern(r"(x+x+)+y").search("x" * (MAX_SUBJECT_CHARS - 1) + "y")


def test_search_looks_at_a_bounded_prefix_and_fullmatch_at_everything():
    pattern = compile_user_pattern("needle")
    assert pattern.search("n" * (MAX_SUBJECT_CHARS - 6) + "needle")
    assert not pattern.search("n" * MAX_SUBJECT_CHARS + "needle")
    allow = compile_user_pattern(r"python run\.py( .*)?")
    assert allow.fullmatch("python run.py " + "x" * (2 * MAX_SUBJECT_CHARS))
    assert not allow.fullmatch("python run.py" + "x" * MAX_SUBJECT_CHARS)


@pytest.mark.parametrize("pattern, message", [
    (r"(a)\1", "backreferences (\\1, (?P=name)) are not supported"),
    (r"(?P<w>x)(?P=w)", "backreferences (\\1, (?P=name)) are not supported"),
    (r"foo(?=bar)", "lookahead and lookbehind"),
    (r"(?<!x)y", "lookahead and lookbehind"),
    (r"a*+", "possessive quantifiers"),
    (r"end\Z", "write \\z for the end of the text"),
    (r"(unclosed", "is not a valid regular expression (missing ): (unclosed)"),
    ("x" * 1001, "is 1,001 characters long; at most 1,000 are allowed"),
])
def test_patterns_re2_cannot_run_are_refused_with_the_reason(pattern, message):
    with pytest.raises(UserPatternError) as refused:
        compile_user_pattern(pattern, "grep pattern")
    assert message in str(refused.value) and str(refused.value).startswith("grep pattern")
