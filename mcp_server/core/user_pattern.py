"""Regular expressions that people and the agent give (tail_log's grep, research.yaml's command allowlist).

They run inside the daemon, which serves the whole fleet, so they run on RE2 (google-re2): matching time is linear
in the text, whatever the pattern. Python's `re` backtracks: `(a+)+$` on one 50,000-character line held the daemon
at 100 % CPU for minutes. RE2 has no backreferences and no lookaround; a pattern using them is refused with what
to write instead, never handed to `re`.
"""
from __future__ import annotations

import re

import re2

MAX_PATTERN_CHARS = 1_000
# Linear time is still time: a search looks at no more than this much of one line (tail_log says when it cut).
MAX_SUBJECT_CHARS = 10_000

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False          # RE2 would print each refusal to the daemon's stderr
# re2 keeps its last 128 compiled patterns: at 2 MiB each (default 8) they stay a bounded part of the daemon.
_OPTIONS.max_mem = 2 << 20

# What RE2 refused, recognised in the pattern (only after RE2 refused it, so a false hit only adds a hint).
_UNSUPPORTED = [
    (re.compile(r"\\[1-9]|\(\?P="), "backreferences (\\1, (?P=name)) are not supported: match the repeated text "
     "literally, or grep for one part and read the lines"),
    (re.compile(r"\(\?<?[=!]"), "lookahead and lookbehind ((?=...), (?!...), (?<=...), (?<!...)) are not supported: "
     "match the text itself, or grep for the part you want and read the lines"),
    (re.compile(r"\(\?>|[*+?}]\+"), "atomic groups (?>...) and possessive quantifiers (*+, ++) are not supported "
     "(nor needed: matching never backtracks); drop the extra + or the ?>"),
    (re.compile(r"\\Z"), "\\Z is not supported: write \\z for the end of the text (or $)"),
]
_SYNTAX = "https://github.com/google/re2/wiki/Syntax"


class UserPatternError(ValueError):
    """The pattern was refused: the message says what was wrong and what to write instead."""


class UserPattern:
    """One compiled user pattern: `search` looks at a bounded prefix of the text, `fullmatch` at all of it."""

    def __init__(self, compiled: re2._Regexp, source: str):
        self._re, self.source = compiled, source

    def search(self, text: str) -> bool:
        return self._re.search(text[:MAX_SUBJECT_CHARS]) is not None

    def fullmatch(self, text: str) -> bool:
        # Never on a prefix: an allowlist matched on the start of a command would admit whatever follows it.
        return self._re.fullmatch(text) is not None


def compile_user_pattern(pattern: str, what: str = "pattern") -> UserPattern:
    """`pattern` compiled with RE2, or UserPatternError naming `what` (e.g. "grep pattern"), the problem and the fix."""
    if not isinstance(pattern, str):
        raise UserPatternError(f"{what} must be a string, got {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UserPatternError(f"{what} is {len(pattern):,} characters long; at most {MAX_PATTERN_CHARS:,} are "
                               "allowed: use a shorter pattern")
    try:
        return UserPattern(re2.compile(pattern, _OPTIONS), pattern)
    except re2.error as e:
        reason = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
    hints = [hint for finder, hint in _UNSUPPORTED if finder.search(pattern)]
    if hints:
        raise UserPatternError(f"{what} {pattern[:80]!r} uses what the linear-time engine (RE2) cannot do: "
                               f"{'; '.join(hints)} (RE2 says: {reason})")
    raise UserPatternError(f"{what} {pattern[:80]!r} is not a valid regular expression ({reason}); fix the "
                           f"pattern (RE2 syntax, close to Python's re: {_SYNTAX})")
